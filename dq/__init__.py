"""Data-quality exception reports: school-level checks over the lake, one row per exception.

``dq.checks`` holds the checks (pure functions over Arrow/Polars tables, no I/O); ``dq.report`` reads the
lake, runs them, writes the ``dq_exceptions`` Delta table and counts them in Prometheus. An exception names
the check and the school (URN) or local authority, never a pupil.
"""
