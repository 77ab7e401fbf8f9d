"""Shipping a live log file to the archive in chunks while the try runs.

New bytes of the live file go to the archive every ``[logging] chunk_interval_seconds``
or as soon as ``chunk_size_kib`` are waiting, whichever is first, and once more at the
end (the final flush), then the log is marked complete. The first bytes go at once, so
a bucket that is missing or refuses us is named in the log's first lines.

While the archive is unreachable, throttling or failing, the live file *is* the spool:
nothing is dropped, the shipper retries with exponential backoff (1 s doubling to 30 s)
and sends everything from the last acknowledged offset once it answers again. What is
still unsent when the final flush gives up is rescued by the scheduler
(``ketch.logs.rescue``), from the same file or from the pod's log.

Two users: the log pump of a pod (one :class:`Shipper` thread per try) and the
scheduler with the local executor (:func:`ship_new_bytes`, one thread for all tries),
so that local tries never hold S3 credentials.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from ketch.logs.archive.base import ArchiveError, ArchiveUnavailable, Completion, LogArchive

MAX_CHUNK_BYTES = 8 * 1024 * 1024  # one PUT; a bigger backlog goes in several
_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 30.0


@dataclass(frozen=True)
class ShipperConfig:
    """What a pod's pump needs to ship (no credentials: the pod's identity provides them,
    or the connection named by ``remote_log_conn_id`` read through the execution API)."""

    key: str  # the log's archive key (``dag_id=…/attempt=N.log``)
    remote_base_log_folder: str
    interval: float = 5.0
    size_bytes: int = 1024 * 1024
    final_flush_timeout: float = 30.0
    endpoint_url: str | None = None
    region: str | None = None
    encrypt: bool = False
    kms_key_id: str | None = None
    conn_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShipperConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def archive(self) -> LogArchive:
        from ketch.logs.archive import s3_archive_for_try

        return s3_archive_for_try(self)


def ship_new_bytes(archive: LogArchive, key: str, path: str, sent: int, upto: int) -> int:
    """Send bytes ``[sent, upto)`` of ``path`` as chunks; returns the new ``sent``.

    Raises :class:`ArchiveError` (or its subclass ``ArchiveUnavailable``) after whatever
    part was acknowledged: the caller retries from the returned offset next time.
    """
    with open(path, "rb") as fh:
        while sent < upto:
            data = os.pread(fh.fileno(), min(upto - sent, MAX_CHUNK_BYTES), sent)
            if not data:
                break  # the file is shorter than we were told (truncated by hand)
            archive.write_chunk(key, sent, data)
            sent += len(data)
    return sent


def unavailable_message(exc: ArchiveError, *, backoff: bool = True, running: bool = True) -> str:
    """The log's line when its archive starts failing (the pod's pump and the scheduler's
    keeper write the same words)."""
    retry = "retried with backoff" if backoff and isinstance(exc, ArchiveUnavailable) else "retried"
    tail = " (the task keeps running)" if running else ""
    return (
        f"log archive unavailable: {exc}; the log waits on this machine's disk and is {retry}{tail}"
    )


def reachable_message(where: str) -> str:
    """The log's line when its archive answers again."""
    return f"log archive {where} reachable again"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Shipper:
    """One try's shipping thread (in the pod's log pump)."""

    def __init__(self, config: ShipperConfig, live_file: str) -> None:
        self.config = config
        self.live_file = live_file
        self.sent = 0  # a chunk repeated after a restart is harmless (same bytes)
        self._written = 0
        self._wake = threading.Condition()
        self._stopping = False
        self._messages: list[str] = []
        self._failing: str | None = None
        self._archive: LogArchive | None = None
        self._flush_lock = threading.Lock()
        self._flush_open = True  # the final flush may still add a line to the log
        self._thread = threading.Thread(target=self._loop, name="ketch-log-shipper", daemon=True)
        self.requests = 0

    # -- the pump's side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def notify(self, written: int) -> None:
        """The live file now holds ``written`` bytes."""
        with self._wake:
            self._written = written
            if written - self.sent >= self.config.size_bytes or self.sent == 0:
                self._wake.notify()

    def pop_messages(self) -> list[str]:
        """Lines for the log about the archive's state (the pump writes them)."""
        with self._wake:
            messages, self._messages = self._messages, []
        return messages

    def finish(self, written: int, say: Any) -> bool:
        """Final flush and completion, bounded by ``final_flush_timeout``; True when the
        archive holds the whole log and knows it is complete.

        The bound holds whatever the archive does: the shipping thread is waited for
        only until the deadline (one of its requests may hang on an unreachable
        archive), and the flush itself runs in a thread of its own that is abandoned
        at the deadline (a request to a partitioned S3 can take a client's timeouts
        and retries, a minute, and in a pod the container ends when the try does)."""
        deadline = time.monotonic() + self.config.final_flush_timeout
        with self._wake:
            self._written = written
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for line in self.pop_messages():
            say(line)
        result: list[bool] = []
        flush = threading.Thread(
            target=lambda: result.append(self._final_flush(deadline, say)),
            name="ketch-log-final-flush",
            daemon=True,
        )
        flush.start()
        flush.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._flush_lock:  # an abandoned flush writes nothing more to the log
            self._flush_open = False
        return bool(result and result[0])

    def _final_flush(self, deadline: float, say: Any) -> bool:
        sent = self.sent  # a still running shipping thread may move self.sent: our own
        backoff = 0.25
        while True:
            size = os.path.getsize(self.live_file) if os.path.exists(self.live_file) else 0
            try:
                archive = self._get_archive()
                sent = ship_new_bytes(archive, self.config.key, self.live_file, sent, size)
                if self._failing is not None and self._say_while_flushing(say):
                    continue  # the archive is back: that line is shipped too, then complete
                archive.complete(self.config.key, Completion(size=size, ended_at=now_iso()))
                self.sent = sent
                return True
            except ArchiveError:
                if time.monotonic() + backoff > deadline:
                    return False  # the scheduler rescues the rest
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _say_while_flushing(self, say: Any) -> bool:
        """The archive answered the final flush after an outage: its "reachable again"
        line (the shipping thread, already stopped, could not say it). False once
        :meth:`finish` has given up on the flush."""
        with self._flush_lock:
            if not self._flush_open:
                return False
            self._failing = None
            say(reachable_message(self.config.remote_base_log_folder))
            return True

    # -- the thread --------------------------------------------------------------------

    def _get_archive(self) -> LogArchive:
        if self._archive is None:
            self._archive = self.config.archive()
        return self._archive

    def _loop(self) -> None:
        backoff = 0.0
        last_ship = time.monotonic()
        while True:
            with self._wake:
                wait = self._next_wait(last_ship, backoff)
                if wait > 0 and not self._stopping:
                    self._wake.wait(timeout=wait)
                if self._stopping:
                    return
                written = self._written
            if written <= self.sent or (time.monotonic() - last_ship < backoff):
                continue
            last_ship = time.monotonic()
            backoff = self._ship(written, backoff)

    def _next_wait(self, last_ship: float, backoff: float) -> float:
        pending = self._written - self.sent
        due = last_ship + max(self.config.interval, backoff)
        if pending <= 0:
            return self.config.interval
        if self.sent == 0 and backoff == 0:
            return 0.0  # the first bytes go at once
        if pending >= self.config.size_bytes and backoff == 0:
            return 0.0
        return max(0.0, due - time.monotonic())

    def _ship(self, written: int, backoff: float) -> float:
        """One attempt; returns the backoff for the next one (0 after a success)."""
        try:
            archive = self._get_archive()
            self.sent = ship_new_bytes(archive, self.config.key, self.live_file, self.sent, written)
        except ArchiveError as exc:
            self._note_failure(exc)
            return min(max(backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
        if self._failing is not None:
            self._failing = None
            self._add_message(reachable_message(self.config.remote_base_log_folder))
        return 0.0

    def _note_failure(self, exc: ArchiveError) -> None:
        text = str(exc)
        if self._failing == text:
            return
        self._failing = text
        self._add_message(unavailable_message(exc))

    def _add_message(self, line: str) -> None:
        with self._wake:
            self._messages.append(line)
