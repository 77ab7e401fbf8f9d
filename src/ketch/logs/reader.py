"""Reading a try's log from wherever it is, in a fixed order, in ranges, or followed.

The order (``docs/logging.md``):

- **running** (the try is queued or running): a complete archived log if there is one
  (the try already flushed), else the try's **live file** when this process can see it
  (local executor, same machine), else the **pod's log** through the Kubernetes API,
  else the archive's newest chunks;
- **finished**: the **archive**, else the live file, else the pod if it still exists;
- **neither**: a :class:`LogUnavailable` whose message says why.

Every source holds the same bytes, so a follower that switches from one to the next
carries on at the same byte offset. Reads are in ranges (at most ``limit`` bytes at a
time) or streamed (:meth:`Source.stream`: the archive's ``iter_bytes``, one listing and
one GET per S3 chunk): a 200 MB log is never loaded whole into the web process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ketch.config import Settings
from ketch.executors.base import TryKey
from ketch.logs.archive.base import ArchiveError, LogArchive, log_key
from ketch.worker.task_log import UnsafeLogPath, log_path

READ_CHUNK = 65536
POLL_SECONDS = 0.1  # a local file: cheap to poll, and a follower sees a line within 0.1 s
ARCHIVE_POLL_SECONDS = 1.0  # each poll of S3 is a LIST request
END_WAIT_SECONDS = 45.0
STATE_CHECK_SECONDS = 0.5  # a finished try whose last chunk is still on its way
# While a try's pod has not started, its follower is told why (Unschedulable, pulling the
# image...) at most this often: each look is a pod GET and an events list.
WAITING_CHECK_SECONDS = 5.0


class LogUnavailable(Exception):
    """No source has this log; the message says why (and ``status`` the HTTP status)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


class Source(Protocol):
    name: str

    def size(self) -> int: ...

    def read(self, offset: int, limit: int) -> bytes: ...

    def stream(self, offset: int) -> Iterator[bytes]:
        """The log from ``offset`` to its current end, in pieces of at most
        :data:`READ_CHUNK` bytes."""
        ...

    def complete(self) -> bool: ...


class LiveFile:
    """The try's live file, when this process shares the disk it is written on."""

    name = "live file"
    poll = POLL_SECONDS

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = path
        self.folder = folder

    def exists(self) -> bool:
        real = self._real()
        return real is not None and real.is_file()

    def _real(self) -> Path | None:
        """Where the file really is, if inside the log folder (a task may have replaced
        its log with a symlink to a server file: never serve that)."""
        try:
            real = self.path.resolve()
            return real if real.is_relative_to(self.folder.resolve()) else None
        except (OSError, RuntimeError):
            return None

    def size(self) -> int:
        real = self._real()
        try:
            return real.stat().st_size if real is not None else 0
        except OSError:
            return 0

    def read(self, offset: int, limit: int) -> bytes:
        real = self._real()
        if real is None:
            return b""
        try:
            with real.open("rb") as fh:
                return os.pread(fh.fileno(), limit, offset)
        except OSError:
            return b""

    def stream(self, offset: int) -> Iterator[bytes]:
        real = self._real()
        if real is None:
            return
        try:
            fh = real.open("rb")
        except OSError:
            return
        with fh:
            while True:
                try:
                    data = os.pread(fh.fileno(), READ_CHUNK, offset)
                except OSError:
                    return
                if not data:
                    return
                offset += len(data)
                yield data

    def complete(self) -> bool:
        return Path(f"{self.path}.complete").exists()


class Archived:
    """The log in the archive (local folder or S3)."""

    name = "archive"

    def __init__(self, archive: LogArchive, key: str) -> None:
        self.archive = archive
        self.key = key
        self.poll = (
            POLL_SECONDS if type(archive).__name__.startswith("Local") else ARCHIVE_POLL_SECONDS
        )

    def size(self) -> int:
        return self.archive.size(self.key)

    def read(self, offset: int, limit: int) -> bytes:
        return self.archive.read(self.key, offset, limit)

    def stream(self, offset: int) -> Iterator[bytes]:
        return self.archive.iter_bytes(self.key, offset, READ_CHUNK)

    def complete(self) -> bool:
        return self.archive.completion(self.key) is not None


class PodSource:
    """A running pod's log through the Kubernetes API (``ketch.logs.pod_log.PodLog``)."""

    name = "pod"
    # A running pod's log is one streaming request that blocks until lines come, so this
    # wait is only between attempts while the pod has not started: each attempt costs a
    # pod GET, a pods/log request and the archive checks, and 0.5 s keeps a follower of
    # a pending pod at ~2 of each per second (at 0.1 s it made ~6) while its first line
    # still shows within the 1 s target.
    poll = 0.5

    # The API gives a pod's log whole: one request's size-then-read (a tail, a range)
    # reuses a read made this recently instead of fetching the log again.
    SNAPSHOT_SECONDS = 0.5

    def __init__(self, pod_log: Any) -> None:
        self.pod_log = pod_log
        self._snapshot: tuple[float, bytes] | None = None

    def _data(self) -> bytes:
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot[0] > self.SNAPSHOT_SECONDS:
            self._snapshot = (now, bytes(self.pod_log.read()))
        return self._snapshot[1]

    def size(self) -> int:
        return len(self._data())

    def read(self, offset: int, limit: int) -> bytes:
        return self._data()[offset : offset + limit]

    def stream(self, offset: int) -> Iterator[bytes]:
        data = self._data()
        for start in range(offset, len(data), READ_CHUNK):
            yield data[start : start + READ_CHUNK]

    def complete(self) -> bool:
        return False

    def follow(self, offset: int) -> Iterator[bytes]:
        follow: Iterator[bytes] = self.pod_log.follow(offset)
        return follow

    def waiting_reason(self) -> str | None:
        """Why the pod has not started yet; None when it has, or when that cannot be read
        now (the reason is a help, never a reason to fail a read)."""
        try:
            reason: str | None = self.pod_log.waiting_reason()
        except Exception:
            return None
        return reason


@dataclass(frozen=True)
class Waiting:
    """A step of :meth:`LogReader.follow`: the try has not started, and this is why."""

    reason: str


PodLogFactory = Callable[[TryKey], Any]  # the try's PodLog, or None (no pod, not k8s)


@dataclass(frozen=True)
class LogSlice:
    data: bytes
    offset: int
    source: str
    complete: bool

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.data)


class LogReader:
    """Finds and reads one try's log; one per request (it caches nothing)."""

    def __init__(
        self,
        settings: Settings,
        archive: LogArchive,
        pod_logs: PodLogFactory | None = None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.pod_logs = pod_logs

    # -- which source ------------------------------------------------------------------

    def _live_file(self, key: TryKey) -> LiveFile | None:
        try:
            path = log_path(self.settings.log_folder, key)
        except UnsafeLogPath:
            return None
        live = LiveFile(path, self.settings.log_folder)
        return live if live.exists() else None

    def _pod(self, key: TryKey) -> PodSource | None:
        if self.pod_logs is None:
            return None
        try:
            pod_log = self.pod_logs(key)
        except Exception:
            return None
        return PodSource(pod_log) if pod_log is not None else None

    def sources(self, key: TryKey, live: bool) -> list[Source]:
        """The sources that have this log now, best first (see the module docstring)."""
        try:
            archived: Archived | None = Archived(self.archive, log_key(key))
        except UnsafeLogPath:
            archived = None
        found: list[Source] = []
        problem: ArchiveError | None = None
        archive_has = False
        if archived is not None:
            try:
                archive_has = archived.complete() if live else archived.size() > 0
            except ArchiveError as exc:
                # A local folder refuses one file (a symlink out of it): not an outage.
                problem = None if getattr(self.archive, "folder", None) else exc
        if archive_has and archived is not None:
            found.append(archived)
        live_file = self._live_file(key)
        # The local folder archive of a local executor is the live file itself: while the
        # try runs it is read (and named) as the live file, once complete or ended as the
        # archive, never as both.
        same = live_file is not None and _same_file(live_file, archived)
        if live_file is not None and (not same or (live and not archive_has)):
            found.append(live_file)
        if live or not found:
            pod = self._pod(key)
            if pod is not None:
                found.append(pod)
        if live and archived is not None and not archive_has and problem is None and not same:
            found.append(archived)  # its newest chunks: a web apart from a local executor
        if not found and problem is not None:
            raise LogUnavailable(f"log archive unavailable: {problem}", status=503)
        return found

    def best(self, key: TryKey, live: bool, *, state: str | None = None) -> Source:
        try:
            log_key(key)
        except UnsafeLogPath as exc:
            raise LogUnavailable(
                f"no log for try {key.try_number} of task {key.task_id!r} in run"
                f" {key.run_id!r}: these ids cannot name a file inside the log folder"
            ) from exc
        found = self.sources(key, live)
        waiting = None
        if found and state == "queued" and isinstance(found[0], PodSource):
            waiting = found[0].waiting_reason()  # a pod not started has no log yet (400)
        if found and waiting is None:
            return found[0]
        raise LogUnavailable(self.why_none(key, live, state, waiting))

    def why_none(
        self, key: TryKey, live: bool, state: str | None, waiting: str | None = None
    ) -> str:
        """Why no source has this log; ``waiting``: why the try's pod has not started."""
        what = f"try {key.try_number} of task {key.task_id!r} in run {key.run_id!r}"
        if state == "queued":
            return f"{what} is queued: its log begins when it starts" + (
                f" ({waiting})" if waiting else ""
            )
        if live:
            return f"{what} is running but its log is not reachable from this server yet"
        where = self.archive_description()
        return f"no log for {what}: nothing in the archive ({where}), no live file, no pod"

    def archive_description(self) -> str:
        try:
            return self.archive.describe()
        except Exception:
            return "the archive"

    # -- reading -----------------------------------------------------------------------

    def read(
        self,
        key: TryKey,
        live: bool,
        offset: int,
        limit: int,
        *,
        state: str | None = None,
        tail_lines: int | None = None,
    ) -> LogSlice:
        """Up to ``limit`` bytes from ``offset``; with ``tail_lines``, from where the last
        ``tail_lines`` lines begin if that is further on than ``offset``."""
        source = self.best(key, live, state=state)
        if tail_lines is not None:
            offset = max(offset, self.tail_offset(source, tail_lines))
        data = source.read(offset, limit)
        return LogSlice(data, offset, source.name, _complete(source))

    @staticmethod
    def pieces(source: Source, offset: int = 0) -> Iterator[bytes]:
        """The log from ``offset`` to its current end in pieces (a download): one stream
        from the source (for S3: one listing, then a GET per chunk)."""
        return source.stream(offset)

    def tail_offset(self, source: Source, lines: int) -> int:
        """The offset where the last ``lines`` lines begin (reading backwards in blocks)."""
        end = source.size()
        at, seen = end, 0
        while at > 0:
            start = max(0, at - READ_CHUNK)
            block = source.read(start, at - start)
            if at == end and block.endswith(b"\n"):
                block = block[:-1]  # the last line's own newline does not start a line
            for index in range(len(block) - 1, -1, -1):
                if block[index] == 0x0A:
                    seen += 1
                    if seen == lines:
                        return start + index + 1
            at = start
        return 0

    def follow(
        self,
        key: TryKey,
        offset: int,
        is_live: Callable[[], str | None],
    ) -> Iterator[bytes | str | Waiting]:
        """Bytes as they are written, then the try's final state (a ``str``) once it is
        over and everything was read. Yields ``b""`` while waiting (short steps, so a
        caller on a thread pool never holds a thread for long), and :class:`Waiting` when
        the reason a try's pod has not started changes."""
        state = is_live()
        last_check = time.monotonic()
        ended_at: float | None = None
        waiting = _WaitingReasons()
        while True:
            live = state is None
            unreachable = False  # the archive is down: wait for it, do not end
            try:
                found = self.sources(key, live)
            except LogUnavailable as exc:
                found = []
                unreachable = exc.status >= 500
            progressed = False
            for source in found:
                if isinstance(source, PodSource) and live:
                    for data in source.follow(offset):
                        offset += len(data)
                        progressed = True
                        yield data
                    if progressed:
                        break
                    continue  # nothing from the pod (not started yet): wait, re-check
                stream = source.stream(offset)
                try:
                    for data in stream:
                        offset += len(data)
                        progressed = True
                        yield data
                except ArchiveError:
                    if not progressed:
                        unreachable = True  # down since sources() looked: the next source
                        continue
                finally:
                    _close(stream)  # a follower that went away: the open S3 body too
                if progressed:
                    break
            now = time.monotonic()
            if progressed:
                continue
            if not live:
                ended_at = ended_at or now
                done = bool(found) and not unreachable and _finished_writing(found[0])
                nowhere = not found and not unreachable
                if done or nowhere or now - ended_at > END_WAIT_SECONDS:
                    yield state or "none"
                    return
            if live and now - last_check >= STATE_CHECK_SECONDS:
                state = is_live()  # read before the next read: its last bytes are seen
                last_check = now
            if live and not offset and (changed := waiting.changed(found, now)) is not None:
                yield changed
            poll = min((getattr(s, "poll", POLL_SECONDS) for s in found), default=POLL_SECONDS)
            time.sleep(poll)
            yield b""


class _WaitingReasons:
    """The latest reason a follower was given for a pod that has not started, so each
    new one is sent once (looked up every :data:`WAITING_CHECK_SECONDS`)."""

    def __init__(self) -> None:
        self.last: str | None = None
        self.checked = 0.0

    def changed(self, found: list[Source], now: float) -> Waiting | None:
        pod = next((source for source in found if isinstance(source, PodSource)), None)
        if pod is None or now - self.checked < WAITING_CHECK_SECONDS:
            return None
        self.checked = now
        reason = pod.waiting_reason()
        if reason is None or reason == self.last:
            return None
        self.last = reason
        return Waiting(reason)


def _finished_writing(source: Source) -> bool:
    """Nothing more will come from ``source``: it is complete, or it is a file on this
    machine whose log pump is gone (a log from before completion records, or a pump that
    was killed: the scheduler adds its footer, but every line is already there)."""
    if _complete(source):
        return True
    path: Path | None = None
    if isinstance(source, LiveFile):
        path = source.path
    elif isinstance(source, Archived) and getattr(source.archive, "folder", None):
        path = Path(source.archive.folder) / source.key  # type: ignore[attr-defined]
    if path is None:
        return False
    from ketch.logs.keeper import pump_is_writing

    return not pump_is_writing(path)


def _close(stream: Iterator[bytes]) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def _complete(source: Source) -> bool:
    try:
        return source.complete()
    except ArchiveError:
        return False


def _same_file(live: LiveFile, archived: Archived | None) -> bool:
    """The local folder archive of a local executor is the live file itself."""
    if archived is None:
        return False
    folder = getattr(archived.archive, "folder", None)
    if folder is None:
        return False
    try:
        return Path(folder).resolve() / archived.key == live.path.resolve()
    except OSError:
        return False
