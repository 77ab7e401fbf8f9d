"""The log pump: a process per try between the try's output and everything that keeps it.

A try's fds 1 and 2 (its prints, tracebacks, a bash task's children) are a pipe. The
pump, forked by the try before anything else runs, reads that pipe, masks secrets
(:class:`~ketch.logs.masking.StreamMasker`), appends the bytes to the try's live file,
echoes them to the pod's stdout (plain, or JSON lines with ``[logging] json_format``)
and, in a pod with an S3 archive, ships chunks (:class:`~ketch.logs.shipper.Shipper`).

Why a separate process rather than a thread of the try: a try killed with SIGKILL (an
OOM kill, the executor's timeout backstop) loses a thread with everything it had read
but not written; the pump, in its own session, sees the pipe's end-of-file only once
every writer is gone and writes what is left first. (A cgroup-wide OOM kill in a pod
kills the pump too: the scheduler then rescues the tail from the pod's log.)

The try talks to its pump over a socket pair (:class:`PumpHandle`):

- ``S`` + a secret: the pump masks it from now on and acknowledges; the try waits for
  the acknowledgement, so a secret printed after ``mask_secret()`` returned is masked;
- ``Q``: the pump first processes every byte already in the pipe, then answers with
  the first error it had writing the live file (the runner fails the try with it).

Lines of ketch's own in the log (``[<time>] ketch: log archive unavailable: ...``) are
written by the pump only, between two lines of the try's output (a line the try left
unfinished keeps them waiting until it ends, or until the pump's end, where a newline is
added first). The pod's shipper hands them over in memory; the scheduler's log keeper,
which ships a local try's log, leaves them in ``{live file}.notes`` (:func:`add_note`),
which the pump takes every 0.2 s and at its end (:func:`take_notes`). Once the pump is
gone the keeper appends its lines itself, holding the live file's ``flock`` exclusively.

Stdlib only (a try imports it); the shipper imports boto3 lazily, in pods with S3 only.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# JSON: {"echo": bool, "json": bool, "ship": {...} | null, "coalesce": bool}
CONFIG_ENV = "KETCH_LOG_PUMP"
_READ_SIZE = 65536
_PARTIAL_AFTER = 0.2  # a line without newline is echoed (JSON: as partial) after this
_ORPHAN_GRACE = 5.0  # the try died but a child still holds the pipe: wait this long
_ACK_TIMEOUT = 5.0
NOTES_SUFFIX = ".notes"  # lines the scheduler asks the pump to write: {live file}.notes
_NOTES_EVERY = 0.2  # how often the pump looks for them


@dataclass
class PumpConfig:
    """What the executor asks of a try's pump (``$KETCH_LOG_PUMP``)."""

    echo_stdout: bool = False
    json_format: bool = False
    ship: dict[str, Any] | None = None  # ShipperConfig fields (pods with an S3 archive)
    coalesce: bool = True  # [logging] coalesce_print_bursts (ketch.worker.stdout_pacing)
    meta: dict[str, Any] = field(default_factory=dict)  # dag_id, run_id, task_id, try_number

    @classmethod
    def from_env(cls, meta: dict[str, Any]) -> PumpConfig:
        raw = os.environ.get(CONFIG_ENV)
        data = json.loads(raw) if raw else {}
        return cls(
            echo_stdout=bool(data.get("echo")),
            json_format=bool(data.get("json")),
            ship=data.get("ship") or None,
            coalesce=bool(data.get("coalesce", True)),
            meta=meta,
        )

    def to_env(self) -> str:
        return json.dumps(
            {
                "echo": self.echo_stdout,
                "json": self.json_format,
                "ship": self.ship,
                "coalesce": self.coalesce,
            }
        )


# -- the try's side ----------------------------------------------------------------------


class PumpHandle:
    """The try's end of its pump: forwards secrets, asks for problems, waits at exit."""

    def __init__(
        self, pid: int, control: socket.socket, saved_stdout: int | None, config: PumpConfig
    ) -> None:
        self.pid = pid
        self.config = config
        self._control = control
        self._lock = threading.Lock()
        self._saved_stdout = saved_stdout
        self._finished = False
        self._unanswered = 0  # calls that gave up waiting: their answers come first

    def _call(self, message: bytes) -> bytes | None:
        """Send ``message``; the pump's answer, or None when it did not come in time.

        The pump answers every message, in order: an answer that comes after its call
        gave up is read and dropped by the next call, never taken for that call's own
        answer (a late ``K`` would become a write problem that fails the try)."""
        with self._lock:
            try:
                self._control.settimeout(_ACK_TIMEOUT)
                self._control.sendall(struct.pack("!I", len(message)) + message)
                while True:
                    answer = _recv_message(self._control)
                    if answer is None or not self._unanswered:
                        return answer
                    self._unanswered -= 1  # the late answer to an earlier call
            except TimeoutError:
                self._unanswered += 1  # the pump is busy (a slow stdout): it answers later
                return None
            except OSError:
                return None  # the pump is gone: its log is already lost, the rescue says so

    def mask(self, secret: str) -> None:
        self._call(b"S" + secret.encode("utf-8", "surrogatepass"))

    def problem(self) -> str | None:
        """Once the pump has processed every byte written so far: its first write error."""
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        answer = self._call(b"Q")
        return answer.decode() if answer else None

    def finish(self, timeout: float) -> bool:
        """Close our ends of the pipe and wait (at most ``timeout``) for the pump to write
        and ship what is left; True if it ended in time."""
        if self._finished:
            return True
        self._finished = True
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        target = self._saved_stdout if self._saved_stdout is not None else devnull
        os.dup2(target, 1)
        os.dup2(target, 2)
        os.close(devnull)
        with suppress(OSError):
            self._control.close()
        return _wait_child(self.pid, timeout)


def _wait_child(pid: int, timeout: float) -> bool:
    """Reap ``pid`` within ``timeout``; True if it ended (a pidfd wakes us at once)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        pidfd = None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return True
            if done:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)


_handle: PumpHandle | None = None


def current() -> PumpHandle | None:
    """This try's pump, if it has one."""
    return _handle


def pump_pid() -> int | None:
    """The pump's pid: the runner must not kill it with the task's own children."""
    return _handle.pid if _handle is not None else None


def start(live_file: str, config: PumpConfig) -> PumpHandle:
    """Fork the pump and make fds 1 and 2 its pipe; returns the try's handle.

    A live file that cannot be opened does not stop the try: the pump notes it as its
    problem (the runner then fails the try with that reason) and still echoes/ships.
    """
    global _handle
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    read_fd, write_fd = os.pipe()
    ours, theirs = socket.socketpair()
    saved_stdout = os.dup(1) if config.echo_stdout else None
    pid = os.fork()
    if pid == 0:  # the pump
        code = 0
        try:
            os.setsid()  # out of the try's process group: a killpg of the try spares it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it ends at the pipe's EOF
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.close(write_fd)
            ours.close()
            Pump(read_fd, theirs, live_file, config, saved_stdout).run()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(read_fd)
    theirs.close()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    _handle = PumpHandle(pid, ours, saved_stdout, config)
    from ketch.worker import secrets_mask

    for value in secrets_mask.sensitive_values():
        _handle.mask(value)
    secrets_mask.add_listener(_forward_secret)
    return _handle


def _forward_secret(value: str) -> None:
    handle = _handle
    if handle is not None:
        handle.mask(value)


def _recv_message(sock: socket.socket) -> bytes | None:
    header = _recv_exact(sock, 4)
    if header is None:
        return None
    (length,) = struct.unpack("!I", header)
    return _recv_exact(sock, length)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            return None
        data += part
    return data


# -- lines of ketch's own ----------------------------------------------------------------


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
            _write_all(fd, line)
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
        while part := os.read(fd, _READ_SIZE):
            data += part
        os.unlink(path)
        return data
    finally:
        os.close(fd)


# -- the pump process --------------------------------------------------------------------


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
        self.stdout = _StdoutEcho(stdout_fd, config) if stdout_fd is not None else None
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
                _write_all(fd, record.encode())
            finally:
                os.close(fd)
            os.replace(temp, f"{self.live_file}.complete")

    def _pump_once(self) -> bool:
        try:
            chunk = os.read(self.read_fd, _READ_SIZE)
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
                chunk = os.read(self.read_fd, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            if not chunk:
                return
            self._emit(self.masker.feed(chunk))

    def _serve_control(self) -> bool:
        try:
            message = _recv_message(self.control)
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
            self.control.sendall(struct.pack("!I", len(reply)) + reply)
        return True

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self.file_fd is not None:
            try:
                _write_all(self.file_fd, data)
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


class _StdoutEcho:
    """The pod's stdout: the same bytes, or JSON records framed by line."""

    def __init__(self, fd: int, config: PumpConfig) -> None:
        self.fd = fd
        self.config = config
        self.framer: Any = None
        if config.json_format:
            from ketch.logs.json_lines import LineFramer

            self.framer = LineFramer()
        self.failed = False

    def write(self, data: bytes) -> None:
        if self.framer is None:
            self._out(data)
            return
        for fragment, partial in self.framer.feed(data):
            self._record(fragment, partial)

    def flush_partial(self) -> None:
        if self.framer is not None:
            fragment = self.framer.flush_partial()
            if fragment:
                self._record(fragment, True)

    def close(self) -> None:
        self.flush_partial()

    def _record(self, fragment: bytes, partial: bool) -> None:
        from ketch.logs.json_lines import encode_record

        self._out(encode_record(fragment, self.config.meta, partial))

    def _out(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            _write_all(self.fd, data)
        except OSError:
            self.failed = True  # the pod's stdout is best effort; the file is the record


def _ends_inside_a_line(path: str, size: int) -> bool:
    if not size:
        return False
    try:
        with open(path, "rb") as fh:
            return os.pread(fh.fileno(), 1, size - 1) != b"\n"
    except OSError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def meta_from_argv(argv: list[str]) -> dict[str, Any]:
    """dag_id, task_id, run_id and try_number from ``ketch task run``'s arguments."""
    meta: dict[str, Any] = {}
    positional = [a for a in argv if not a.startswith("--")][:3]
    for name, value in zip(("dag_id", "task_id", "run_id"), positional, strict=False):
        meta[name] = value
    if "--try" in argv:
        index = argv.index("--try") + 1
        if index < len(argv) and argv[index].isdigit():
            meta["try_number"] = int(argv[index])
    if "--map-index" in argv:
        index = argv.index("--map-index") + 1
        if index < len(argv) and argv[index].isdigit():
            meta["map_index"] = int(argv[index])
    return meta


def default_finish_timeout(config: PumpConfig) -> float:
    ship = config.ship or {}
    return float(ship.get("final_flush_timeout", 0)) + 5.0
