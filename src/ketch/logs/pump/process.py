"""The pump process's loop: pipe -> masking -> live file, pod stdout, shipper.

Runs in the process the try forks first (``handle.start``); it ends at the pipe's
end-of-file, once every writer is gone, after writing what is left (see the package's
docstring for why it is a process of its own).
"""

from __future__ import annotations

import fcntl
import json
import os
import selectors
import socket
import time
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from ketch.logs.pump.config import PumpConfig
from ketch.logs.pump.control import recv_message, send_message
from ketch.logs.pump.fdio import READ_SIZE, write_all
from ketch.logs.pump.notes import note_line, take_notes
from ketch.logs.pump.stdout_echo import StdoutEcho

_PARTIAL_AFTER = 0.2  # a line without newline is echoed (JSON: as partial) after this
_ORPHAN_GRACE = 5.0  # the try died but a child still holds the pipe: wait this long
_NOTES_EVERY = 0.2  # how often the pump looks for them


class Pump:
    """The loop of the pump process: pipe -> mask -> live file, stdout, shipper."""

    def __init__(
        self,
        read_fd: int,
        control: socket.socket,
        live_file: str,
        config: PumpConfig,
        stdout_fd: int | None,
    ) -> None:
        from ketch.logs.masking import StreamMasker

        self.read_fd = read_fd
        self.control = control
        self.live_file = live_file
        self.config = config
        self.masker = StreamMasker()
        self.stdout = StdoutEcho(stdout_fd, config) if stdout_fd is not None else None
        self.problem: str | None = None
        self.written = 0
        self.try_pid = os.getppid()
        self.notes: list[bytes] = []  # lines of ketch's own waiting for a line boundary
        self.line_open = False  # the log ends inside a line of the try's output
        self.ending = False  # after the pipe's end: lines of ketch's own go at once
        self._notes_due = 0.0
        self.file_fd = self._open_live_file()
        self.shipper = self._make_shipper()

    def _open_live_file(self) -> int | None:
        from ketch.worker.task_log import describe_write_error, open_log_file

        try:
            fd = open_log_file(self.live_file)
        except OSError as exc:
            self.problem = describe_write_error(exc, self.live_file)
            return None
        self.written = os.fstat(fd).st_size  # a relaunched try appends to its own log
        self.line_open = _ends_inside_a_line(self.live_file, self.written)
        with suppress(OSError):  # "the pump is still writing" for the scheduler's shipper
            fcntl.flock(fd, fcntl.LOCK_SH)
        # A relaunched try's log is not complete while this pump writes to it: the record
        # of the earlier run (its size, "complete" for readers and the keeper) goes.
        with suppress(FileNotFoundError):
            os.unlink(f"{self.live_file}.complete")
        return fd

    def _make_shipper(self) -> Any:
        if not self.config.ship or self.file_fd is None:
            return None
        from ketch.logs.shipper import Shipper, ShipperConfig

        shipper = Shipper(ShipperConfig.from_json(self.config.ship), self.live_file)
        shipper.start()
        return shipper

    def run(self) -> None:
        # Non-blocking: a question (``Q``) may have drained the bytes the selector saw,
        # and a blocking read would then wait for the try's next output, answering no
        # secret, showing no partial line and telling nothing of the archive meanwhile.
        os.set_blocking(self.read_fd, False)
        selector = selectors.DefaultSelector()
        selector.register(self.read_fd, selectors.EVENT_READ, "data")
        selector.register(self.control, selectors.EVENT_READ, "control")
        orphaned_at: float | None = None
        open_ = True
        while open_:
            events = selector.select(timeout=_PARTIAL_AFTER)
            kinds = {key.data for key, _ in events}
            if "control" in kinds and not self._serve_control():
                selector.unregister(self.control)
            if "data" in kinds:
                open_ = self._pump_once()
            elif not events and self.stdout is not None:
                self.stdout.flush_partial()
            if self.shipper is not None:
                for line in self.shipper.pop_messages():
                    self._say(line)
            self._take_notes()
            if open_ and os.getppid() != self.try_pid:
                # The try is gone; a child that kept the pipe open must not keep the log
                # (and the pod) open forever.
                orphaned_at = orphaned_at or time.monotonic()
                if time.monotonic() - orphaned_at > _ORPHAN_GRACE:
                    open_ = False
        self._emit(self.masker.flush())
        self.ending = True
        self._take_notes(now=True)
        self._write_notes()
        if self.stdout is not None:
            self.stdout.close()
        if self.shipper is not None:
            self.shipper.finish(self.written, say=self._say)
        self._mark_complete()

    def _mark_complete(self) -> None:
        """``{live file}.complete``: the pump ended normally and wrote everything (the
        local archive's completion record; the scheduler's shipper and readers use it)."""
        if self.file_fd is None or self.problem:
            return
        # The record of ketch.logs.archive.base.Completion, written with the stdlib only:
        # importing the archive package here would cost every try's exit milliseconds.
        ended_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        record = json.dumps(
            {"size": self.written, "captured_by": "try", "reason": None, "ended_at": ended_at}
        )
        temp = f"{self.live_file}.complete.tmp"
        with suppress(OSError):
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, record.encode())
            finally:
                os.close(fd)
            os.replace(temp, f"{self.live_file}.complete")

    def _pump_once(self) -> bool:
        try:
            chunk = os.read(self.read_fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return True  # nothing left (the control message's drain took it)
        if not chunk:
            return False
        self._emit(self.masker.feed(chunk))
        return True

    def _drain_available(self) -> None:
        """Process what is in the pipe right now (before answering a question)."""
        while True:
            try:
                chunk = os.read(self.read_fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            if not chunk:
                return
            self._emit(self.masker.feed(chunk))

    def _serve_control(self) -> bool:
        try:
            message = recv_message(self.control)
        except OSError:
            message = None
        if message is None:
            return False
        if message[:1] == b"S":
            self.masker.add(message[1:].decode("utf-8", "surrogatepass"))
            reply = b"K"
        else:
            self._drain_available()
            reply = (self.problem or "").encode()
        with suppress(OSError):
            send_message(self.control, reply)
        return True

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self.file_fd is not None:
            try:
                write_all(self.file_fd, data)
                self.written += len(data)
                self.line_open = not data.endswith(b"\n")
            except OSError as exc:
                from ketch.worker.task_log import describe_write_error

                self.problem = self.problem or describe_write_error(exc, self.live_file)
        if self.stdout is not None:
            self.stdout.write(data)
        if self.shipper is not None:
            self.shipper.notify(self.written)

    def _say(self, message: str) -> None:
        """A line of ketch's own in the log (the archive became unreachable...)."""
        self.notes.append(note_line(message))
        self._write_notes()

    def _take_notes(self, now: bool = False) -> None:
        """The scheduler's lines for this log (``{live file}.notes``), every 0.2 s."""
        if self.file_fd is None:
            return
        moment = time.monotonic()
        if not now and moment < self._notes_due:
            self._write_notes()
            return
        self._notes_due = moment + _NOTES_EVERY
        try:
            data = take_notes(self.live_file)
        except OSError:
            data = b""  # the scheduler appends them itself once we are gone
        if data:
            if not data.endswith(b"\n"):
                data += b"\n"
            self.notes.append(data)
        self._write_notes()

    def _write_notes(self) -> None:
        """Write the waiting lines of ketch's own, never inside a line of the try's."""
        if not self.notes or (self.line_open and not self.ending):
            return
        if self.line_open:
            self._emit(b"\n")  # the try's last line ended without one
        notes, self.notes = self.notes, []
        for line in notes:
            self._emit(line)


def _ends_inside_a_line(path: str, size: int) -> bool:
    if not size:
        return False
    try:
        with open(path, "rb") as fh:
            return os.pread(fh.fileno(), 1, size - 1) != b"\n"
    except OSError:
        return False
