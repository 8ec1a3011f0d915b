"""A process's memory as Linux reports it in ``/proc/<pid>/status``: the worker logs its own, the national
benchmark polls its workers'."""

from __future__ import annotations


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak so far) in KiB; empty when unreadable (not Linux, or the
    process has ended)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    values[line[:5]] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return {}
    return values
