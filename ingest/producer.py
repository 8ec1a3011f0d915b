"""The contractor's reference producer: extract files -> chunked messages on the extracts topic.

Each file is read and checked whole before any of it is sent: a file that does not parse or whose
structure breaks the contract is refused with a message naming the file and the fault. Record values
(check letters, codes) are the stream's to judge, not the producer's. Delivery is acks=all with
idempotence and zstd compression; the key is the URN so one school's chunks stay in order.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from attendance.errors import UserFacingError
from attendance.settings import Settings
from schemas.contract import ContractViolation, check_structure

EXTRACT_SUFFIXES = (".json", ".json.gz")
#: Room for the envelope of a chunk (header, brackets) beyond the pupils themselves.
_ENVELOPE_BYTES = 1024


class RefusedFile(Exception):
    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class Chunk:
    key: bytes
    value: bytes
    pupils: int
    marks: int


@dataclass
class SendSummary:
    files_sent: int = 0
    messages_sent: int = 0
    pupils_sent: int = 0
    marks_sent: int = 0
    bytes_sent: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    undelivered: list[tuple[str, str]] = field(default_factory=list)  # (file, error)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.refused and not self.undelivered


def find_extract_files(paths: Iterable[Path]) -> list[Path]:
    """Files named on the command line, and extract files found under folders, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(EXTRACT_SUFFIXES)))
        elif path.exists():
            found.append(path)
        else:
            raise UserFacingError(f"{path}: no such file or folder")
    return found


def read_extract_file(path: Path) -> dict[str, Any]:
    """Parse and structurally check one extract file, or raise RefusedFile naming what is wrong."""
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise RefusedFile(path, f"cannot be read: {exc}") from exc
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RefusedFile(path, f"not valid UTF-8 JSON: {exc}") from exc
    try:
        check_structure(document, whole_file=True)
    except ContractViolation as exc:
        raise RefusedFile(path, "breaks the feed contract: " + "; ".join(exc.problems)) from exc
    return document


def chunk_extract(document: dict[str, Any], max_message_bytes: int) -> list[Chunk]:
    """Split one whole extract into messages no larger than ``max_message_bytes``.

    Every chunk repeats the header with ``chunk_index``/``chunk_count``; ``pupil_count`` stays the whole
    extract's. Deterministic: the same document always gives the same bytes.
    """
    header = {k: v for k, v in document.items() if k not in ("pupils", "chunk_index", "chunk_count")}
    pupils = [orjson.dumps(p) for p in document["pupils"]]
    budget = max_message_bytes - len(orjson.dumps(header)) - _ENVELOPE_BYTES
    groups: list[list[int]] = [[]]
    used = 0
    for position, encoded in enumerate(pupils):
        size = len(encoded) + 1
        if size > budget:
            raise ValueError(f"pupil at position {position} is {size} bytes, over the {budget}-byte chunk budget")
        if used + size > budget and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(position)
        used += size
    key = str(document["urn"]).encode()
    chunks = []
    for index, group in enumerate(groups):
        head = orjson.dumps({**header, "chunk_index": index, "chunk_count": len(groups)})
        value = head[:-1] + b',"pupils":[' + b",".join(pupils[i] for i in group) + b"]}"
        marks = sum(len(document["pupils"][i]["sessions"]) for i in group)
        chunks.append(Chunk(key=key, value=value, pupils=len(group), marks=marks))
    return chunks


def make_producer(bootstrap: str, settings: Settings):
    """A kafka-python producer configured for the feed; a clear error within seconds if Kafka is down."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError, MetadataEmptyBrokerList

    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            compression_type="zstd",
            linger_ms=20,
            batch_size=1_048_576,
            max_request_size=settings.max_message_bytes + _ENVELOPE_BYTES,
            delivery_timeout_ms=int(settings.delivery_timeout_s * 1000),
            request_timeout_ms=int(settings.delivery_timeout_s * 1000 / 2),
            max_block_ms=int(settings.connect_timeout_s * 1000),
            bootstrap_timeout_ms=int(settings.connect_timeout_s * 1000),
        )
    except (KafkaTimeoutError, KafkaConnectionError, MetadataEmptyBrokerList) as exc:
        raise UserFacingError(
            f"cannot reach Kafka at {bootstrap} within {settings.connect_timeout_s:.0f}s ({type(exc).__name__}); "
            "is the broker running? (`attendance kafka start`)"
        ) from exc


def _iter_checked(files: list[Path], settings: Settings, summary: SendSummary) -> Iterator[tuple[Path, list[Chunk]]]:
    for path in files:
        try:
            document = read_extract_file(path)
            chunks = chunk_extract(document, settings.max_message_bytes)
        except RefusedFile as exc:
            summary.refused.append((str(path), exc.reason))
            continue
        except ValueError as exc:
            summary.refused.append((str(path), str(exc)))
            continue
        yield path, chunks


def send_files(paths: Iterable[Path], settings: Settings, bootstrap: str, *, progress: bool = False) -> SendSummary:
    """Send every extract file under ``paths``; refused and undelivered files are listed in the summary."""
    from kafka.errors import KafkaError

    files = find_extract_files(paths)
    summary = SendSummary()
    started = time.monotonic()
    producer = make_producer(bootstrap, settings)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="file", desc="send", dynamic_ncols=True)
    pending: list[tuple[Path, list[Any], list[Chunk]]] = []

    def settle(entry: tuple[Path, list[Any], list[Chunk]]) -> None:
        path, futures, chunks = entry
        try:
            for future in futures:
                future.get(timeout=settings.delivery_timeout_s + 5)
        except KafkaError as exc:
            summary.undelivered.append((str(path), f"{type(exc).__name__}: {exc}"))
            return
        summary.files_sent += 1
        summary.messages_sent += len(chunks)
        summary.pupils_sent += sum(c.pupils for c in chunks)
        summary.marks_sent += sum(c.marks for c in chunks)
        summary.bytes_sent += sum(len(c.value) for c in chunks)

    try:
        for path, chunks in _iter_checked(files, settings, summary):
            try:
                futures = [producer.send(settings.topic_extracts, key=c.key, value=c.value) for c in chunks]
            except KafkaError as exc:
                summary.undelivered.append((str(path), f"{type(exc).__name__}: {exc}"))
                if len(summary.undelivered) >= 3 and summary.files_sent == 0:
                    break  # the broker is clearly unreachable: stop rather than time out file by file
                continue
            pending.append((path, futures, chunks))
            if len(pending) >= 200:  # bound memory: settle the oldest futures
                for entry in pending:
                    settle(entry)
                pending.clear()
            if bar is not None:
                bar.update(1)
                elapsed = max(time.monotonic() - started, 1e-6)
                bar.set_postfix(pupils_per_s=f"{summary.pupils_sent / elapsed:,.0f}", refresh=False)
        producer.flush(timeout=settings.delivery_timeout_s + 5)
        for entry in pending:
            settle(entry)
    finally:
        producer.close(timeout=5)
        if bar is not None:
            bar.close()
    summary.seconds = time.monotonic() - started
    return summary
