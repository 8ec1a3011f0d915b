"""Extract completeness: hold an extract's chunks until all have arrived; nothing of it is visible before.

Pure bookkeeping, no I/O. The worker feeds every chunk's header (read cheaply) with its Kafka position;
:meth:`ExtractAssembler.add` says which extracts are now resolvable. Chunks of one school arrive in order on
one partition (key = URN), so an extract is normally complete within one batch; one that is not keeps the
partition's committed offset behind its first chunk, so a crash re-reads it from Kafka rather than losing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class ChunkRef:
    extract_id: str
    chunk_index: int
    chunk_count: int
    tp: TopicPartition
    offset: int
    timestamp_ms: int
    value: bytes


@dataclass
class PendingExtract:
    extract_id: str
    chunk_count: int
    chunks: list[ChunkRef] = field(default_factory=list)

    @property
    def first_timestamp_ms(self) -> int:
        return min(c.timestamp_ms for c in self.chunks)

    def resolvable(self) -> bool:
        """All chunks present, or numbering so broken that waiting cannot help (rules will reject it)."""
        indexes = [c.chunk_index for c in self.chunks]
        if any(c.chunk_count != self.chunk_count for c in self.chunks):
            return True
        if any(i < 0 or i >= self.chunk_count for i in indexes) or len(set(indexes)) != len(indexes):
            return True
        return len(indexes) == self.chunk_count


class ExtractAssembler:
    def __init__(self) -> None:
        self.pending: dict[str, PendingExtract] = {}

    def add(self, chunk: ChunkRef) -> PendingExtract | None:
        """Add a chunk; return its extract when it can be resolved now."""
        entry = self.pending.get(chunk.extract_id)
        if entry is None:
            entry = self.pending[chunk.extract_id] = PendingExtract(chunk.extract_id, chunk.chunk_count)
        if any(c.tp == chunk.tp and c.offset == chunk.offset for c in entry.chunks):
            return None  # the same message delivered again (a re-read): already held
        entry.chunks.append(chunk)
        if entry.resolvable():
            return self.pending.pop(chunk.extract_id)
        return None

    def expire(self, now_ms: int, timeout_ms: int) -> list[PendingExtract]:
        """Extracts whose first chunk arrived more than ``timeout_ms`` ago: resolved as incomplete."""
        expired = [e for e in self.pending.values() if now_ms - e.first_timestamp_ms > timeout_ms]
        for entry in expired:
            del self.pending[entry.extract_id]
        return expired

    def drop_partitions(self, tps: set[TopicPartition]) -> None:
        """Forget chunks of partitions this worker no longer owns (their new owner re-reads them)."""
        for extract_id in [k for k, e in self.pending.items() if any(c.tp in tps for c in e.chunks)]:
            del self.pending[extract_id]

    def resume_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the earliest offset still held: the committed position may not pass it."""
        earliest: dict[TopicPartition, int] = {}
        for entry in self.pending.values():
            for chunk in entry.chunks:
                if chunk.tp not in earliest or chunk.offset < earliest[chunk.tp]:
                    earliest[chunk.tp] = chunk.offset
        return earliest
