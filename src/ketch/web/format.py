"""What the pages show for values: state colours, dates, durations, where an import failed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

STATE_COLOURS: dict[str, str] = {
    # Airflow's state colours (airflow/settings.py STATE_COLORS)
    "success": "green",
    "failed": "red",
    "running": "lime",
    "queued": "gray",
    "scheduled": "tan",
    "up_for_retry": "gold",
    "up_for_reschedule": "turquoise",
    "skipped": "hotpink",
    "upstream_failed": "orange",
    "removed": "lightgrey",
    "none": "transparent",
}
"""Airflow's colour of each task-instance and run state; ``none``: no state yet."""

STATES = tuple(STATE_COLOURS)


def state_key(state: str | None) -> str:
    """The CSS class suffix of a state (``none`` for no state yet, or one ketch lacks)."""
    return state if state in STATE_COLOURS else "none"


def when(value: datetime | None) -> str:
    """A UTC time as ``2026-03-01 12:00:05`` (empty when unknown)."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def duration(start: datetime | None, end: datetime | None) -> str:
    """``1h 02m 03s`` / ``2m 05s`` / ``4.21s``; empty when it has not started."""
    if start is None or end is None:
        return ""
    seconds = max((end - start).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


@dataclass(frozen=True, slots=True)
class ImportProblem:
    """A DAG file that failed to parse: the file, the line (if the trace names one), why."""

    filename: str
    line: int | None
    message: str
    stacktrace: str


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


def import_problem(filename: str, stacktrace: str) -> ImportProblem:
    """The line of ``filename`` the trace points at last (where the error is), and the
    trace's last non-empty line (``SyntaxError: ...``, ``NameError: ...``)."""
    line = None
    for match in _FRAME.finditer(stacktrace):
        if match.group("file") == filename or filename.endswith(match.group("file")):
            line = int(match.group("line"))
    if line is None:
        frames = list(_FRAME.finditer(stacktrace))
        if frames:
            line = int(frames[-1].group("line"))
    lines = [s for s in stacktrace.strip().splitlines() if s.strip()]
    message = lines[-1].strip() if lines else "could not be imported"
    return ImportProblem(filename, line, message, stacktrace)
