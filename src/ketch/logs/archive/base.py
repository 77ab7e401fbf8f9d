"""The log archive protocol: where finished (and running) tries' logs are kept.

A log in the archive is named by its *key*, the try's path relative to the archive
root: ``dag_id=D/run_id=R/task_id=T/attempt=N.log`` (Airflow's layout; see
:func:`log_key`). Its bytes arrive as chunks written at byte offsets
(:meth:`LogArchive.write_chunk`); two writers of the same range write the same bytes
(every writer copies from the same masked stream), so a repeated or overlapping chunk
is harmless. A log is *complete* once a :class:`Completion` is recorded: by the try's
log pump after its final flush, or by the scheduler's rescue (``captured_by =
"scheduler"`` and why).

Implementations: :class:`~ketch.logs.archive.local.LocalFolderArchive` (a folder; the
default, ``$KETCH_HOME/logs``) and :class:`~ketch.logs.archive.s3.S3Archive`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from ketch.executors.base import TryKey


class ArchiveError(Exception):
    """The archive cannot be used; the message says what is wrong, in one line
    (``s3://logs/prefix: NoSuchBucket: the bucket does not exist``)."""


class ArchiveUnavailable(ArchiveError):
    """A transient failure (unreachable, throttled, 5xx): worth retrying with backoff."""


@dataclass(frozen=True)
class Completion:
    """A log's end: its size, who closed it and, for a rescue, why."""

    size: int
    captured_by: Literal["try", "scheduler"] = "try"
    reason: str | None = None
    ended_at: str | None = None  # ISO 8601 UTC

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Completion:
        captured_by: Literal["try", "scheduler"] = (
            "scheduler" if data.get("captured_by") == "scheduler" else "try"
        )
        return cls(
            size=int(data["size"]),
            captured_by=captured_by,
            reason=data.get("reason"),
            ended_at=data.get("ended_at"),
        )


def log_key(key: TryKey) -> str:
    """``dag_id=D/run_id=R/task_id=T/attempt=N.log``; raises ``UnsafeLogPath`` for ids
    that cannot be one path segment each (the same rule as the live file)."""
    from pathlib import PurePosixPath

    from ketch.worker.task_log import log_path

    path = log_path(PurePosixPath("/"), key)  # type: ignore[arg-type]
    return str(path)[1:]


class LogArchive(Protocol):
    """Where logs are archived. Methods raise :class:`ArchiveUnavailable` for transient
    failures and :class:`ArchiveError` for the rest; never a library's own exception."""

    def describe(self) -> str:
        """Where, for messages: ``s3://bucket/prefix`` or the folder's path."""
        ...

    def check(self) -> None:
        """Raise :class:`ArchiveError` saying what is wrong, if anything (health)."""
        ...

    def write_chunk(self, key: str, offset: int, data: bytes) -> None:
        """Store ``data`` as bytes ``[offset, offset + len(data))`` of the log."""
        ...

    def complete(self, key: str, completion: Completion) -> None:
        """Record that the log is complete (after its last chunk is stored)."""
        ...

    def completion(self, key: str) -> Completion | None:
        """The log's completion, or None while it is incomplete (or absent)."""
        ...

    def size(self, key: str) -> int:
        """Bytes available from offset 0 without a gap (0 when absent)."""
        ...

    def read(self, key: str, offset: int, limit: int) -> bytes:
        """Up to ``limit`` bytes from ``offset`` (fewer at the end; b"" past it)."""
        ...

    def iter_bytes(self, key: str, offset: int = 0, chunk_size: int = 65536) -> Iterator[bytes]:
        """The log from ``offset`` in pieces of at most ``chunk_size`` (a download)."""
        ...

    def delete_older_than(self, cutoff: dt.datetime) -> int:
        """Delete logs whose last write is before ``cutoff``; how many were deleted."""
        ...
