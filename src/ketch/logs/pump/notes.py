"""Lines of ketch's own in a try's log, and how the scheduler hands them to the pump.

The pump alone writes a running try's live file, so the scheduler's log keeper leaves its
lines in ``{live file}.notes`` (:func:`add_note`); the pump takes them every 0.2 s and at
its end (:func:`take_notes`) and writes them between two lines of the try's output.
"""

from __future__ import annotations

import fcntl
import os
from datetime import UTC, datetime

from ketch.logs.pump.fdio import READ_SIZE, write_all

NOTES_SUFFIX = ".notes"  # lines the scheduler asks the pump to write: {live file}.notes


def note_line(message: str) -> bytes:
    """``[<UTC time>] ketch: <message>`` and a newline: a line of ketch's own in a log."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"[{stamp}] ketch: {message}\n".encode()


def add_note(live_file: str | os.PathLike[str], line: bytes) -> None:
    """Leave ``line`` (whole lines) in ``{live_file}.notes`` for the try's pump to write.

    Appended under an exclusive ``flock``; a file that :func:`take_notes` took (and
    unlinked) while we waited for the lock is not written to: a new one is made."""
    path = os.fspath(live_file) + NOTES_SUFFIX
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink == 0:
                continue
            write_all(fd, line)
            return
        finally:
            os.close(fd)


def take_notes(live_file: str | os.PathLike[str]) -> bytes:
    """The lines left in ``{live_file}.notes`` (b"" when none), removing the file."""
    path = os.fspath(live_file) + NOTES_SUFFIX
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink == 0:
            return b""  # someone else took them
        data = b""
        while part := os.read(fd, READ_SIZE):
            data += part
        os.unlink(path)
        return data
    finally:
        os.close(fd)
