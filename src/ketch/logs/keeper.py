"""The scheduler's log keeper: ships local tries' logs, rescues unfinished ones, retention.

One thread in the scheduler process, every ``[logging] chunk_interval_seconds``:

- **Local executor with an S3 archive.** Local tries never hold S3 credentials: the
  scheduler, on the machine where their live files are, ships new bytes of every
  running try, and once a try's log pump is gone (it holds a shared ``flock`` on the
  live file while it writes) ships the rest and marks the log complete. When the
  archive starts failing, and when it answers again, the try's log gets the same line a
  pod's pump writes (``ketch: log archive unavailable: ...``, ``... reachable again``),
  once per outage: the keeper leaves it in ``{live file}.notes`` for the pump to write
  between two lines, or appends it itself once the pump is gone (``ketch.logs.pump``).
- **Rescue.** A try whose pump ended without writing ``{live file}.complete`` (it was
  killed) gets its log completed by the scheduler, with a footer saying so
  (``ketch.logs.rescue``). Pods are rescued by the Kubernetes executor before deletion.
- **Retention.** With ``[logging] log_retention_days``, once an hour, archived logs and
  local live files older than that are deleted.

Which tries: those the database says are queued or running, and those that ended since
the last pass (a minute of overlap). After a restart the first pass looks back a day,
so a try that ended while the scheduler was down is still shipped: nothing here lives
only in memory that the database and the files cannot rebuild.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ketch.config import Settings
from ketch.executors.base import TryKey
from ketch.logs.archive.base import ArchiveError, Completion, LogArchive, log_key
from ketch.logs.metrics import LOG_RESCUES, LOG_SHIP_ERRORS
from ketch.logs.pump.notes import add_note, note_line, take_notes
from ketch.logs.rescue import rescue_from_file
from ketch.logs.shipper import reachable_message, ship_new_bytes, unavailable_message
from ketch.states import TaskInstanceState
from ketch.worker.task_log import UnsafeLogPath, log_path

log = logging.getLogger(__name__)

_LIVE = (TaskInstanceState.QUEUED.value, TaskInstanceState.RUNNING.value)
FIRST_LOOK_BACK = dt.timedelta(days=1)
OVERLAP = dt.timedelta(minutes=1)
RETENTION_EVERY = 3600.0
PUMP_GONE_REASON = "the try's log pump ended before its final flush (it was killed)"


@dataclass
class _Tracked:
    key: TryKey
    path: Path
    archive_key: str
    sent: int = -1  # -1: ask the archive first (a restart resumes where it stopped)
    live: bool = True
    failing: str | None = None  # the archive's error while it fails for this log


def pump_is_writing(path: Path) -> bool:
    """Whether a log pump still holds its shared lock on ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops our lock, if we got it
    return False


def append_if_pump_gone(path: Path, lines: bytes = b"") -> bool:
    """Append the lines left for the pump (``{path}.notes``) and ``lines`` to the live
    file, if no pump holds its lock (taken here exclusively for the write, so a pump
    that starts meanwhile waits); False, writing nothing, while a pump writes. Starts
    a new line first if the log ends inside one, and keeps the pump's ``.complete``
    record's size true."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        data = take_notes(path) + lines
        if not data:
            return True
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        own = local_completion(path)
        if own is not None:
            _write_record(path, dataclasses.replace(own, size=os.fstat(fd).st_size))
        return True
    finally:
        os.close(fd)  # and with it our lock


def _write_record(path: Path, completion: Completion) -> None:
    """Rewrite the pump's ``.complete`` record, atomically and owner-only as it does."""
    temp = f"{path}.complete.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(completion.to_json(), file)
    os.replace(temp, f"{path}.complete")


def local_completion(path: Path) -> Completion | None:
    """The pump's own ``.complete`` record of a live file (written at a normal end)."""
    try:
        return Completion.from_json(json.loads(Path(f"{path}.complete").read_text()))
    except (OSError, ValueError, KeyError):
        return None


class LogKeeper:
    """The thread described in the module docstring."""

    def __init__(self, settings: Settings, engine: Engine, archive: LogArchive) -> None:
        self.settings = settings
        self.engine = engine
        self.archive = archive
        self.ships = settings.logging.remote_logging and settings.core.executor == "local"
        self.keeps_local = settings.core.executor == "local"
        self.interval = settings.logging.chunk_interval_seconds
        self._tracked: dict[TryKey, _Tracked] = {}
        self._done: dict[TryKey, float] = {}
        self._since: dt.datetime | None = None
        self._last_retention: float | None = None  # the first pass deletes at once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ketch-log-keeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except SQLAlchemyError as exc:  # the database is down: the scheduler says so once
                log.debug("log keeper pass skipped: database unavailable: %s", exc)
            except Exception:
                log.exception("log keeper pass failed")
            self._stop.wait(self.interval)

    # -- one pass ----------------------------------------------------------------------

    def run_once(self) -> None:
        if self.keeps_local:
            self._refresh()
            for tracked in list(self._tracked.values()):
                self._keep(tracked)
        self._retention()

    def _refresh(self) -> None:
        """Track what the database says is running or ended since the last pass."""
        from ketch.db.models import TaskInstance, TaskInstanceTry

        now = dt.datetime.now(dt.UTC)  # aware: the database refuses naive datetimes
        since = (self._since - OVERLAP) if self._since else now - FIRST_LOOK_BACK
        query = (
            select(
                TaskInstance.dag_id,
                TaskInstance.run_id,
                TaskInstance.task_id,
                TaskInstance.map_index,
                TaskInstanceTry.try_number,
                TaskInstanceTry.state,
            )
            .join(TaskInstance, TaskInstance.id == TaskInstanceTry.task_instance_id)
            .where(or_(TaskInstanceTry.state.in_(_LIVE), TaskInstanceTry.end_date >= since))
        )
        with Session(self.engine) as session:
            rows = session.execute(query).all()
        self._since = now
        for row in rows:
            key = TryKey(row.dag_id, row.run_id, row.task_id, row.try_number, row.map_index)
            if key in self._done:
                continue
            tracked = self._tracked.get(key) or self._track(key)
            if tracked is not None:
                tracked.live = row.state in _LIVE
        cutoff = time.monotonic() - 2 * FIRST_LOOK_BACK.total_seconds()
        self._done = {k: t for k, t in self._done.items() if t > cutoff}

    def _track(self, key: TryKey) -> _Tracked | None:
        try:
            path = log_path(self.settings.log_folder, key)
            archive_key = log_key(key)
        except UnsafeLogPath:
            return None
        tracked = self._tracked[key] = _Tracked(key, path, archive_key)
        return tracked

    def _keep(self, tracked: _Tracked) -> None:
        if not tracked.path.exists():
            if not tracked.live:
                self._finish(tracked)  # never started here (another machine, a failed fork)
            return
        try:
            # Whether the pump is gone is asked *before* shipping: a pump that writes its
            # last bytes and ends while we ship must not get its log completed with
            # those bytes missing (the next pass ships them, then completes).
            ended = not tracked.live and not pump_is_writing(tracked.path)
            if self.ships:
                if Path(f"{tracked.path}.notes").exists():  # left for a pump that ended
                    append_if_pump_gone(tracked.path)
                asked = self._ship(tracked)
                if tracked.failing is not None:
                    if not asked:  # nothing new to send: is it back? (one request)
                        self.archive.size(tracked.archive_key)
                    tracked.failing = None
                    self._note(tracked, reachable_message(self.archive.describe()))
                    if ended:
                        self._ship(tracked)  # that line, before the log is complete
            if ended:
                self._complete(tracked)
                self._finish(tracked)
            self.last_error = None
        except ArchiveError as exc:
            LOG_SHIP_ERRORS.inc()
            if self.last_error != str(exc):
                log.warning("cannot archive the log of %s: %s (retrying)", tracked.key, exc)
            self.last_error = str(exc)
            if self.ships and tracked.failing is None:
                tracked.failing = str(exc)
                self._note(tracked, unavailable_message(exc, backoff=False, running=tracked.live))

    def _note(self, tracked: _Tracked, message: str) -> None:
        """A line in the try's log: by its pump while it runs, else appended here."""
        line = note_line(message)
        try:
            if not append_if_pump_gone(tracked.path, line):
                add_note(tracked.path, line)
        except OSError as exc:
            log.warning("cannot note %r in the log of %s: %s", message, tracked.key, exc)

    def _ship(self, tracked: _Tracked) -> bool:
        """Send the live file's new bytes; whether the archive was asked anything."""
        asked = False
        if tracked.sent < 0:
            tracked.sent = self.archive.size(tracked.archive_key)
            asked = True
        size = tracked.path.stat().st_size
        if size > tracked.sent:
            tracked.sent = ship_new_bytes(
                self.archive, tracked.archive_key, str(tracked.path), tracked.sent, size
            )
            asked = True
        return asked

    def _complete(self, tracked: _Tracked) -> None:
        if self.archive.completion(tracked.archive_key) is not None:
            return
        own = local_completion(tracked.path)
        if own is not None:
            if self.ships:  # the local archive reads the pump's own record
                self.archive.complete(tracked.archive_key, own)
            return
        LOG_RESCUES.labels("live file").inc()
        rescue_from_file(
            self.archive,
            tracked.archive_key,
            tracked.path,
            source="the try's live file",
            reason=PUMP_GONE_REASON,
        )

    def _finish(self, tracked: _Tracked) -> None:
        self._tracked.pop(tracked.key, None)
        self._done[tracked.key] = time.monotonic()

    # -- retention ---------------------------------------------------------------------

    def _retention(self) -> None:
        days = self.settings.logging.log_retention_days
        if not days:
            return
        if (
            self._last_retention is not None
            and time.monotonic() - self._last_retention < RETENTION_EVERY
        ):
            return
        self._last_retention = time.monotonic()
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        deleted = delete_older_than(self.settings, self.archive, cutoff)
        if deleted:
            log.info("log retention: deleted %d logs older than %d days", deleted, days)


def delete_older_than(settings: Settings, archive: LogArchive, cutoff: dt.datetime) -> int:
    """Delete archived logs, and local live files when the archive is elsewhere."""
    deleted = 0
    try:
        deleted += archive.delete_older_than(cutoff)
    except ArchiveError as exc:
        log.warning("log retention: %s", exc)
    if settings.logging.remote_logging:
        from ketch.logs.archive.local import LocalFolderArchive

        deleted += LocalFolderArchive(settings.log_folder).delete_older_than(cutoff)
    return deleted
