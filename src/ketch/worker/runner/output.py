"""The runner's own lines in the try's log: timestamped and marked ``ketch:``, so they
stand apart from the task's output. Every part of the runner writes through here."""

from __future__ import annotations

from datetime import UTC, datetime


def stamped(message: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"[{stamp}] ketch: {message}"


def say(message: str) -> None:
    """One timestamped line of the runner's own output."""
    print(stamped(message), flush=True)
