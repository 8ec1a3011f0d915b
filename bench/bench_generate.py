"""Benchmark ``attendance generate``: pupil records/s, marks/s and peak RSS.

    .venv/bin/python bench/bench_generate.py --schools 2000 --days 1 --workers 2

Writes into a temporary directory (removed afterwards unless --keep). Peak RSS is reported for the main
process and, separately, the largest worker process (``RUSAGE_CHILDREN`` reports the largest child).
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import shutil
import tempfile
from pathlib import Path

from ingest.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schools", type=int, default=2000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-compress", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="Output directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="Keep the output")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-generate-")) / "out"
    try:
        summary = generate(
            out,
            schools=args.schools,
            start_date=dt.date(2026, 11, 16),
            days=args.days,
            seed=args.seed,
            workers=args.workers,
            compress=not args.no_compress,
        )
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(out.parent, ignore_errors=True)
    main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"schools={summary.schools} days={len(summary.days)} workers={args.workers} "
        f"compress={not args.no_compress}"
    )
    print(
        f"extracts={summary.extracts:,} pupils={summary.pupils:,} marks={summary.marks:,} "
        f"bytes={summary.bytes / 1e6:,.1f} MB seconds={summary.seconds:.2f}"
    )
    print(
        f"pupil records/s={summary.pupils / summary.seconds:,.0f} "
        f"marks/s={summary.marks / summary.seconds:,.0f}"
    )
    print(f"peak RSS main={main_rss:,.0f} MiB largest worker={child_rss:,.0f} MiB")


if __name__ == "__main__":
    main()
