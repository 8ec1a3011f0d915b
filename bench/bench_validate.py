"""Benchmark the stream's pure core: decode_messages + check_headers + validate_records, one thread.

    .venv/bin/python bench/bench_validate.py                      # a synthetic 2,000-school day
    .venv/bin/python bench/bench_validate.py --no-names           # ... without forename/surname
    .venv/bin/python bench/bench_validate.py --from DIR           # extract files from `attendance generate`

The synthetic day is built in memory by a simple builder of its own (not ingest/generate.py): schools of
about 380 pupils, two marks each for the extract day and about 5% amendments for earlier days, each pupil
with a forename and surname outside the contract (as real MIS feeds and `attendance generate` have them),
serialised as chunk messages of at most 1 MB like the contractor's producer. About 1% of pupils carry one
injected fault (a wrong check letter, an unknown code, a duplicate mark, a wrong JSON type, more fields
outside the contract, ...) and about 0.5% of schools a message-level fault, so every path of the validator
is exercised.

Messages are processed in batches of whole extracts (``--batch-messages``), as the worker does. Only the
three calls are timed (CPU time of this process, which discounts other load on a shared machine; wall time
is printed too). Prints pupil records/s and marks/s, and the rejections by reason code.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import gzip
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from schemas.upn import make_upn
from streams.decode import decode_messages
from streams.validate import check_extract_consistency, check_headers, validate_records

MAX_MESSAGE_BYTES = 1_000_000
EXTRACT_DATE = dt.date(2026, 11, 17)  # a Tuesday
ABSENCE_CODES = (
    ["I"] * 30
    + ["M"] * 5
    + ["N"] * 5
    + ["O"] * 4
    + ["G"] * 3
    + ["U"] * 2
    + ["C", "R", "E", "T", "S", "C1", "C2", "J1"]
)
PRESENT_OTHER = ["L"] * 6 + ["B", "V", "P", "W", "K", "D", "Y1", "Q", "#", "X"]
PUPIL_FAULTS = {  # kind: relative weight
    "upn_check": 1.0,
    "year_group": 1.0,
    "dob": 1.0,
    "sex": 1.0,
    "sen": 1.0,
    "duplicate_upn": 1.0,
    "missing_field": 1.0,
    "extra_fields": 1.0,
    "bad_date": 0.5,
    "wrong_type": 0.2,
    "unknown_code": 1.0,
    "legacy_code": 1.0,
    "weekend": 1.0,
    "outside_window": 1.0,
    "bad_session": 1.0,
    "duplicate_conflict": 1.0,
    "duplicate_same": 1.0,
    "no_mark": 1.0,
}
MESSAGE_FAULTS = ("unknown_urn", "laestab_mismatch", "truncated", "future_date")


def _weekday_before(day: dt.date, n: int) -> dt.date:
    while n:
        day -= dt.timedelta(days=1)
        if day.weekday() < 5:
            n -= 1
    return day


def _date_of_birth(rng: random.Random, age: int) -> str:
    """A birthday giving ``age`` on 31 August before the extract's academic year."""
    academic_year = EXTRACT_DATE.year - (EXTRACT_DATE.month < 9)
    month = rng.randint(1, 12)
    year = academic_year - age - (1 if month >= 9 else 0)
    return dt.date(year, month, rng.randint(1, 28)).isoformat()


def _pupil(rng: random.Random, la: int, establishment: int, serial: int, names: bool) -> dict:
    year = rng.choice(["R", *map(str, range(1, 12))] * 4 + ["12", "13", "N2"])
    age = {"R": 4, "N2": 3}.get(year) or int(year) + 4
    code_am = "/" if rng.random() > 0.06 else rng.choice(ABSENCE_CODES + PRESENT_OTHER)
    code_pm = "\\" if rng.random() > 0.06 else (code_am if code_am != "/" else rng.choice(ABSENCE_CODES))
    day = EXTRACT_DATE.isoformat()
    sessions = [
        {"date": day, "session": "AM", "code": code_am},
        {"date": day, "session": "PM", "code": code_pm},
    ]
    if rng.random() < 0.05:  # an amendment to an earlier day within the window
        sessions.append(
            {
                "date": _weekday_before(EXTRACT_DATE, rng.randint(1, 6)).isoformat(),
                "session": rng.choice(("AM", "PM")),
                "code": rng.choice(ABSENCE_CODES),
            }
        )
    pupil = {
        "upn": make_upn(la, establishment, rng.randint(15, 25), serial),
        "date_of_birth": _date_of_birth(rng, age),
        "sex": rng.choice("MF"),
        "nc_year_group": year,
        "ethnicity": rng.choice(["WBRI", "WBRI", "WBRI", "AIND", "APKN", "BAFR", "MWBC", "WOTH", None]),
        "fsm_eligible": rng.random() < 0.25,
        "sen_provision": rng.choice("NNNNNNNKKE"),
        "looked_after": rng.random() < 0.01,
        "child_in_need": rng.random() < 0.03 if rng.random() < 0.8 else None,
        "child_protection_plan": False if rng.random() < 0.8 else None,
        "admission_date": f"{EXTRACT_DATE.year - rng.randint(0, 5)}-09-0{rng.randint(1, 7)}",
        "leaving_date": None,
        "sessions": sessions,
    }
    if names:
        pupil["forename"] = rng.choice(["Amelia", "Oliver", "Zoë", "Muhammad", "Isla", "George"])
        pupil["surname"] = rng.choice(["Smith", "Jones", "Khan", "O'Brien", "Nowak", "Williams"])
    return pupil


def _inject(rng: random.Random, pupils: list[dict], kind: str, position: int) -> None:
    pupil = pupils[position]
    marks = pupil["sessions"]
    if kind == "upn_check":
        pupil["upn"] = ("B" if pupil["upn"][0] != "B" else "C") + pupil["upn"][1:]
    elif kind == "year_group":
        pupil["nc_year_group"] = "15"
    elif kind == "dob":
        pupil["date_of_birth"] = "2001-01-01"
    elif kind == "sex":
        pupil["sex"] = "U"
    elif kind == "sen":
        pupil["sen_provision"] = "S"
    elif kind == "duplicate_upn" and position > 0:
        pupil["upn"] = pupils[position - 1]["upn"]
    elif kind == "missing_field":
        del pupil["admission_date"]
    elif kind == "extra_fields":
        pupil["forename"], pupil["comments"] = "Sam", "called home: no answer"
    elif kind == "bad_date":
        pupil["date_of_birth"] = "2015-02-30"
    elif kind == "wrong_type":
        pupil["fsm_eligible"] = "Y"
    elif kind == "unknown_code":
        marks[0]["code"] = "Q9"
    elif kind == "legacy_code":
        marks[0]["code"] = "H"
    elif kind == "weekend":
        marks.append({"date": "2026-11-15", "session": "AM", "code": "/"})
    elif kind == "outside_window":
        marks.append({"date": "2026-10-20", "session": "AM", "code": "I"})
    elif kind == "bad_session":
        marks[1]["session"] = "pm"
    elif kind == "duplicate_conflict":
        marks.append({**marks[0], "code": "N" if marks[0]["code"] != "N" else "O"})
    elif kind == "duplicate_same":
        marks.append(dict(marks[0]))
    elif kind == "no_mark":
        marks[1]["code"] = "-"


def _chunk(header: dict, pupils: list[dict]) -> list[bytes]:
    """Chunk messages of at most MAX_MESSAGE_BYTES, each repeating the header (like ingest/producer.py)."""
    encoded = [orjson.dumps(p) for p in pupils]
    head_size = len(orjson.dumps(header)) + 100
    groups: list[list[bytes]] = [[]]
    used = head_size
    for item in encoded:
        if used + len(item) + 1 > MAX_MESSAGE_BYTES and groups[-1]:
            groups.append([])
            used = head_size
        groups[-1].append(item)
        used += len(item) + 1
    messages = []
    for index, group in enumerate(groups):
        head = orjson.dumps({**header, "chunk_index": index, "chunk_count": len(groups)})
        messages.append(head[:-1] + b',"pupils":[' + b",".join(group) + b"]}")
    return messages


def build_day(
    schools: int, *, seed: int, fault_rate: float, names: bool
) -> tuple[list[list[bytes]], pa.Table, int, int]:
    """(messages per extract, register, pupils, marks) for one synthetic day."""
    rng = random.Random(seed)
    kinds, weights = list(PUPIL_FAULTS), list(PUPIL_FAULTS.values())
    extracts: list[list[bytes]] = []
    register_rows = []
    total_pupils = total_marks = 0
    for school in range(schools):
        urn = f"{100000 + school}"
        la, establishment = rng.randint(201, 940), rng.randint(1000, 7999)
        laestab = f"{la}{establishment}"
        register_rows.append({"urn": urn, "laestab": laestab, "status": "Open"})
        size = min(2000, max(30, int(rng.gauss(380, 160))))
        pupils = [_pupil(rng, la, establishment, serial, names) for serial in range(size)]
        for position in range(size):
            if rng.random() < fault_rate:
                _inject(rng, pupils, rng.choices(kinds, weights)[0], position)
        header = {
            "schema_version": "1",
            "extract_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "urn": urn,
            "laestab": laestab,
            "extract_date": EXTRACT_DATE.isoformat(),
            "generated_at": f"{EXTRACT_DATE.isoformat()}T16:{rng.randint(0, 59):02d}:00+00:00",
            "pupil_count": size,
        }
        message_fault = rng.choice(MESSAGE_FAULTS) if rng.random() < fault_rate / 2 else None
        if message_fault == "unknown_urn":
            register_rows.pop()
        elif message_fault == "laestab_mismatch":
            header["laestab"] = f"{la}{establishment + 1}"
        elif message_fault == "future_date":
            header["extract_date"] = (EXTRACT_DATE + dt.timedelta(days=1)).isoformat()
        messages = _chunk(header, pupils)
        if message_fault == "truncated":
            messages[0] = messages[0][: len(messages[0]) // 2]
        extracts.append(messages)
        total_pupils += size
        total_marks += sum(len(p["sessions"]) for p in pupils)
    register = pa.Table.from_pylist(register_rows)
    return extracts, register, total_pupils, total_marks


def read_directory(directory: Path) -> tuple[list[list[bytes]], pa.Table, int, int]:
    """Extract files (.json / .json.gz, whole extracts) under ``directory``, chunked into messages."""
    extracts: list[list[bytes]] = []
    register_rows: dict[str, dict] = {}
    total_pupils = total_marks = 0
    for path in sorted(p for p in directory.rglob("*") if p.name.endswith((".json", ".json.gz"))):
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if path.name.endswith(".gz") else raw
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:  # a malformed extract: sent as it is, one message
            extracts.append([raw])
            continue
        if not isinstance(document, dict) or "pupils" not in document:
            continue  # not an extract (a summary file beside them)
        header = {k: v for k, v in document.items() if k != "pupils"}
        extracts.append(_chunk(header, document["pupils"]))
        register_rows.setdefault(
            str(header.get("urn")),
            {"urn": str(header.get("urn")), "laestab": str(header.get("laestab")), "status": "Open"},
        )
        total_pupils += len(document["pupils"])
        pupils_sent = [p for p in document["pupils"] or [] if isinstance(p, dict)]
        total_marks += sum(len(p.get("sessions") or []) for p in pupils_sent)
    if not extracts:
        raise SystemExit(f"no extract files (.json/.json.gz) under {directory}")
    register = pa.Table.from_pylist(list(register_rows.values()))
    gias = sorted(directory.rglob("edubasealldata*.csv"))
    if gias:  # the generator's register (so that unknown URNs are unknown); else every URN sent is open
        from ingest.register import read_gias_csv

        register = read_gias_csv(gias[0]).table
    return extracts, register, total_pupils, total_marks


def batches(extracts: list[list[bytes]], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for messages in extracts:
        if batch and len(batch) + len(messages) > size:
            yield batch
            batch = []
        batch.extend(messages)
    if batch:
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schools", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-rate", type=float, default=0.01, help="Share of pupils with a fault")
    parser.add_argument(
        "--no-names",
        dest="names",
        action="store_false",
        help="Leave out the forename and surname every pupil carries by default",
    )
    parser.add_argument("--batch-messages", type=int, default=200, help="Messages per decode call")
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        help="Read extract files from this directory instead of building a day",
    )
    parser.add_argument("--repeat", type=int, default=1, help="Run the timed loop this many times; best")
    parser.add_argument("--baseline", action="store_true",
                        help="Also time Arrow's JSON reader and the contract's reader alone on the same batches "
                        "(the decoder's floor; meaningful with --fault-rate 0)")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.source:
        extracts, register, pupils, marks = read_directory(args.source)
        extract_date = None
    else:
        extracts, register, pupils, marks = build_day(
            args.schools, seed=args.seed, fault_rate=args.fault_rate, names=args.names
        )
        extract_date = EXTRACT_DATE
    work = list(batches(extracts, args.batch_messages))
    message_count = sum(len(b) for b in work)
    megabytes = sum(len(m) for b in work for m in b) / 1e6
    print(
        f"built {len(extracts):,} extracts, {message_count:,} messages ({megabytes:,.0f} MB), "
        f"{pupils:,} pupils, {marks:,} marks in {time.perf_counter() - started:.1f}s; "
        f"{len(work)} batches of <= {args.batch_messages} messages"
    )

    best_cpu = best_wall = float("inf")
    for _ in range(args.repeat):
        reasons: collections.Counter[str] = collections.Counter()
        accepted_pupils = accepted_marks = extra = slow = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for batch in work:
            decoded = decode_messages(batch)
            today = extract_date or (
                decoded.headers.column("extract_date")[0].as_py()
                if decoded.headers.num_rows
                else dt.date.today()
            )
            header_rejections = check_headers(decoded.headers, register, today, max_age_days=30)
            consistency = check_extract_consistency(decoded.headers)
            rejected = pa.concat_arrays([header_rejections.column("msg_index").combine_chunks(),
                                         consistency.column("msg_index").combine_chunks()])
            accepted = decoded.headers.filter(pc.invert(pc.is_in(decoded.headers.column("msg_index"),
                                                                 value_set=rejected)))
            result = validate_records(accepted, decoded.pupils, decoded.marks, amendment_window_school_days=7)
            accepted_pupils += result.accepted_pupils.num_rows
            accepted_marks += result.accepted_marks.num_rows
            extra += decoded.extra_fields_dropped
            slow += decoded.slow_path_messages
            for table in (
                decoded.message_rejections,
                decoded.pupil_rejections,
                decoded.mark_rejections,
                header_rejections,
                consistency,
                result.rejections,
            ):
                reasons.update(table.column("reason_code").to_pylist())
        best_cpu = min(best_cpu, time.process_time() - cpu0)
        best_wall = min(best_wall, time.perf_counter() - wall0)

    if args.baseline:
        from streams.decode import _PARSE_OPTIONS  # the decoder's own explicit schema

        best_parse = float("inf")
        for _ in range(args.repeat):
            cpu0 = time.process_time()
            for batch in work:
                joined = b"\n".join(batch)
                with contextlib.suppress(pa.ArrowInvalid):  # a faulty batch stops early: use --fault-rate 0
                    pj.read_json(pa.BufferReader(joined), parse_options=_PARSE_OPTIONS,
                                 read_options=pj.ReadOptions(use_threads=False, block_size=len(joined) + 1))
            best_parse = min(best_parse, time.process_time() - cpu0)
        print(f"Arrow JSON reader alone: {pupils / best_parse:,.0f} pupil records/s")
        from streams.decode import _CONTRACT_READER  # the contract's own reader (streams/jsonscan.py)
        from streams.jsonscan import join_messages

        best_scan = float("inf")
        for _ in range(args.repeat):
            cpu0 = time.process_time()
            for batch in work:
                _CONTRACT_READER.read(*join_messages(batch), 0, len(batch))
            best_scan = min(best_scan, time.process_time() - cpu0)
        print(f"the contract's reader alone: {pupils / best_scan:,.0f} pupil records/s")
    print(
        f"decode + check_headers + check_extract_consistency + validate_records: "
        f"{best_cpu:.2f}s CPU ({best_wall:.2f}s wall)"
    )
    print(f"pupil records/s: {pupils / best_cpu:,.0f} (wall {pupils / best_wall:,.0f})")
    print(f"marks/s:         {marks / best_cpu:,.0f} (wall {marks / best_wall:,.0f})")
    print(
        f"accepted: {accepted_pupils:,} pupils, {accepted_marks:,} marks; slow-path messages: {slow}; "
        f"fields outside the contract dropped: {extra:,}"
    )
    for code, count in sorted(reasons.items()):
        print(f"  {code:30s} {count:>8,}")


if __name__ == "__main__":
    main()
