"""The stdout pacer: line buffered at a human pace, block buffered (flushed every tick)
during a burst of prints, back to line buffered when calm; forks neither lose nor repeat
lines. Real pipes, a real thread and a real fork."""

from __future__ import annotations

import io
import os
import select
import time
from collections.abc import Iterator

import pytest

from ketch.worker import stdout_pacing


class CountingFileIO(io.FileIO):
    def __init__(self, fd: int) -> None:
        super().__init__(fd, "w", closefd=False)
        self.writes = 0
        self.written = 0
        self.on_busy = None

    def write(self, data):  # type: ignore[no-untyped-def, override]
        self.writes += 1
        if not self.writes % stdout_pacing.WAKE_EVERY and self.on_busy is not None:
            self.on_busy()
        count = super().write(data)
        self.written += count or 0
        return count


@pytest.fixture
def paced() -> Iterator[tuple[io.TextIOWrapper, CountingFileIO, int]]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    raw = CountingFileIO(write_fd)
    stream = io.TextIOWrapper(io.BufferedWriter(raw, 32 * 1024), line_buffering=True)
    stdout_pacing.pace([(stream, raw)])
    yield stream, raw, read_fd
    stdout_pacing.stop()
    stdout_pacing._pacer = None
    os.close(read_fd)
    os.close(write_fd)


def drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            part = os.read(fd, 1 << 20)
        except BlockingIOError:
            return out
        if not part:
            return out
        out += part


def read_until(fd: int, expected: bytes, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while not got.endswith(expected) and time.monotonic() < deadline:
        select.select([fd], [], [], 0.01)
        got += drain(fd)
    return got


def test_a_slow_printer_stays_line_buffered(paced) -> None:
    stream, _raw, read_fd = paced
    for i in range(5):
        print(f"line {i}", file=stream)
        assert drain(read_fd) == f"line {i}\n".encode()  # on the pipe at once
        time.sleep(stdout_pacing.TICK_SECONDS)
    assert stream.line_buffering


def test_a_burst_is_coalesced_and_still_reaches_the_pipe_within_ticks(paced) -> None:
    stream, raw, read_fd = paced
    lines = [f"burst {i:05d}" for i in range(40_000)]
    got = b""
    for i, line in enumerate(lines):
        print(line, file=stream)
        if i % 200 == 0:
            got += drain(read_fd)  # keep the pipe from filling
    assert not stream.line_buffering, "a burst switches the stream to block buffering"
    # caught within a few hundred lines (the raw wakes the pacer), not after a whole tick
    assert raw.writes < 2_000, f"{raw.writes} writes for {len(lines)} lines"
    # no flush from here: the pacer's tick carries the rest
    got += read_until(read_fd, b"burst 39999\n", timeout=2.0)
    assert got == "".join(f"{line}\n" for line in lines).encode()
    deadline = time.monotonic() + 2.0
    while not stream.line_buffering and time.monotonic() < deadline:
        time.sleep(stdout_pacing.TICK_SECONDS)
    assert stream.line_buffering, "calm again: back to line buffering"
    print("after", file=stream)
    assert drain(read_fd) == b"after\n"


def test_a_fork_during_a_burst_neither_loses_nor_repeats_lines(paced) -> None:
    stream, _raw, read_fd = paced
    got = b""
    printed = 0
    deadline = time.monotonic() + 5.0
    while (stream.line_buffering or printed < 5_000) and time.monotonic() < deadline:
        print(f"parent {printed}", file=stream)
        printed += 1
        if printed % 200 == 0:
            got += drain(read_fd)
    assert not stream.line_buffering, "a burst switches the stream to block buffering"
    pid = os.fork()
    if pid == 0:  # the child: line buffered, nothing of the parent's pending lines
        code = 0 if stream.line_buffering else 3
        print("child line", file=stream)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's copy is line buffered"
    stream.flush()
    got += read_until(read_fd, f"parent {printed - 1}\n".encode(), timeout=2.0)
    got += drain(read_fd)
    assert got.count(b"child line\n") == 1
    parent_lines = [line for line in got.split(b"\n") if line.startswith(b"parent")]
    assert parent_lines == [f"parent {i}".encode() for i in range(printed)]
