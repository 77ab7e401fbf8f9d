"""The scheduler's rescue of a log whose try ended without its final flush.

A try that was OOM-killed, evicted, lost its node, crashed before its task started or
was killed at its timeout did not mark its archived log complete. The scheduler then
takes the log from where it still is (the try's live file with the local executor, the
pod's container log through the Kubernetes API before the pod is deleted), archives
the part the archive lacks, and ends the log with one line saying so and why::

    [2026-12-01T06:00:00.000000Z] ketch: the end of this log was captured by the
    scheduler from the pod's log: OOMKilled, memory limit 256Mi

Every source holds the same bytes as the archive (the pump wrote one masked stream to
all of them), so the missing part is simply the source's bytes past the archive's
contiguous size.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

from ketch.logs.archive.base import Completion, LogArchive

log = logging.getLogger(__name__)


def footer_line(source: str, reason: str) -> bytes:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return (
        f"[{stamp}] ketch: the end of this log was captured by the scheduler from {source}:"
        f" {reason}\n"
    ).encode()


def rescue_from_bytes(
    archive: LogArchive, key: str, content: bytes, *, source: str, reason: str
) -> Completion:
    """Archive what ``archive`` lacks of ``content`` and mark the log complete.

    Does nothing (returns the existing completion) when the log is already complete.
    Raises :class:`~ketch.logs.archive.base.ArchiveError` when the archive cannot be
    written: the caller keeps its source (the pod is not deleted) and retries.
    """
    done = archive.completion(key)
    if done is not None:
        return done
    have = archive.size(key)
    if len(content) > have:
        archive.write_chunk(key, have, content[have:])
        have = len(content)
    return _close_with_footer(archive, key, have, source=source, reason=reason)


def add_footer(
    archive: LogArchive, key: str, done: Completion, *, source: str, reason: str
) -> Completion:
    """Add the footer to a log its try completed itself although it did not end by
    itself (Kubernetes OOM-killed or evicted it and its log pump survived long enough to
    write everything): the log says why it ended. Nothing when the scheduler already
    closed the log."""
    if done.captured_by == "scheduler":
        return done
    return _close_with_footer(archive, key, done.size, source=source, reason=reason)


def _close_with_footer(
    archive: LogArchive, key: str, have: int, *, source: str, reason: str
) -> Completion:
    if have and not _ends_with_newline(archive, key, have):
        archive.write_chunk(key, have, b"\n")
        have += 1
    footer = footer_line(source, reason)
    archive.write_chunk(key, have, footer)
    completion = Completion(
        size=have + len(footer),
        captured_by="scheduler",
        reason=reason,
        ended_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    archive.complete(key, completion)
    log.info("log %s captured by the scheduler from %s (%s)", key, source, reason)
    return completion


def _ends_with_newline(archive: LogArchive, key: str, size: int) -> bool:
    return archive.read(key, size - 1, 1) == b"\n"


def rescue_from_file(
    archive: LogArchive, key: str, path: os.PathLike[str] | str, *, source: str, reason: str
) -> Completion:
    """:func:`rescue_from_bytes` for a file, sent in pieces (a 200 MB log never sits in
    memory). With the local folder archive the file may be the archive itself: then
    only the footer is added."""
    from ketch.logs.shipper import ship_new_bytes

    done = archive.completion(key)
    if done is not None:
        return done
    have = archive.size(key)
    size = os.path.getsize(path)
    if size > have:
        have = ship_new_bytes(archive, key, os.fspath(path), have, size)
    return _close_with_footer(archive, key, have, source=source, reason=reason)
