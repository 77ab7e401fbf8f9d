"""The fork server: parallel spawns, exit codes, signals, env/argv/log, EOF, restart."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ketch.executors.forkserver.client import ChildExit, ForkServer

TARGETS = "tests.unit._forkserver_targets"


class Events:
    def __init__(self) -> None:
        self.exits: queue.Queue[ChildExit] = queue.Queue()
        self.orphans: queue.Queue[dict[int, object]] = queue.Queue()

    def next_exits(self, n: int, timeout: float = 20) -> list[ChildExit]:
        return [self.exits.get(timeout=timeout) for _ in range(n)]


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def server(events: Events) -> Iterator[ForkServer]:
    fs = ForkServer(events.exits.put, events.orphans.put)
    fs.start([TARGETS])
    yield fs
    fs.stop()


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.02)
    return False


def test_many_children_in_parallel_report_their_exit_codes(
    server: ForkServer, events: Events, tmp_path: Path
) -> None:
    spawned = {}
    for i in range(40):
        child = server.spawn(
            [str(i % 4)],
            env={"TARGET_ENV": f"e{i}"},
            log_file=str(tmp_path / "logs" / f"{i}.log"),
            tag=i,
            target=f"{TARGETS}:exit_with",
        )
        spawned[i] = child
        assert child.create_time > 0
    exits = events.next_exits(40)
    assert {e.tag: e.exit_code for e in exits} == {i: i % 4 for i in range(40)}
    assert {e.tag: e.pid for e in exits} == {i: c.pid for i, c in spawned.items()}
    assert all(e.signal is None for e in exits)
    log = (tmp_path / "logs" / "7.log").read_text()
    assert "argv=['3'] env=e7" in log
    # Each child is the leader of its own session (so its group can be killed).
    assert f"sid={spawned[7].pid} pid={spawned[7].pid}" in log
    randoms = {
        re.search(r"random=(\S+)", (tmp_path / "logs" / f"{i}.log").read_text()).group(1)  # type: ignore[union-attr]
        for i in range(40)
    }
    assert len(randoms) == 40, "forked children must not share the random state"


def test_signal_deaths_are_reported(server: ForkServer, events: Events) -> None:
    server.spawn(
        [str(int(signal.SIGKILL))], env={}, log_file=None, tag="k", target=f"{TARGETS}:kill_self"
    )
    sleeper = server.spawn(["30"], env={}, log_file=None, tag="t", target=f"{TARGETS}:sleep_for")
    os.kill(sleeper.pid, signal.SIGTERM)
    exits = {e.tag: e for e in events.next_exits(2)}
    assert exits["k"].signal == signal.SIGKILL and exits["k"].exit_code is None
    assert exits["t"].signal == signal.SIGTERM


def test_children_do_not_carry_the_parents_heavy_modules(
    server: ForkServer, events: Events, tmp_path: Path
) -> None:
    import sqlalchemy  # noqa: F401  (loaded in this process, must not be in the child)

    log = tmp_path / "m.log"
    server.spawn([], env={}, log_file=str(log), target=f"{TARGETS}:report_modules")
    assert events.next_exits(1)[0].exit_code == 0
    assert log.read_text().strip() == "[]"


def test_server_exits_on_eof_and_leaves_children_running(events: Events) -> None:
    fs = ForkServer(events.exits.put, events.orphans.put)
    fs.start([TARGETS])
    server_pid = fs.pid
    assert server_pid is not None
    child = fs.spawn(["30"], env={}, log_file=None, target=f"{TARGETS}:sleep_for")
    fs.stop()
    try:
        assert not psutil.pid_exists(server_pid)
        assert psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE
        assert events.exits.empty() and events.orphans.empty()
    finally:
        os.kill(child.pid, signal.SIGKILL)


def test_a_dead_server_is_restarted_and_its_children_handed_over(
    server: ForkServer, events: Events
) -> None:
    old_pid = server.pid
    assert old_pid is not None
    child = server.spawn(["30"], env={}, log_file=None, tag="orphan", target=f"{TARGETS}:sleep_for")
    os.kill(old_pid, signal.SIGKILL)
    orphans = events.orphans.get(timeout=20)
    try:
        assert orphans == {child.pid: "orphan"}
        assert server.pid not in (None, old_pid)
        again = server.spawn(["5"], env={}, log_file=None, tag="new", target=f"{TARGETS}:exit_with")
        exit_event = events.next_exits(1)[0]
        assert (exit_event.tag, exit_event.pid, exit_event.exit_code) == ("new", again.pid, 5)
    finally:
        os.kill(child.pid, signal.SIGKILL)
    assert wait_gone(child.pid)


PARENT_SCRIPT = """
import sys, time
from ketch.executors.forkserver.client import ForkServer
fs = ForkServer(lambda e: None)
fs.start([{targets!r}])
child = fs.spawn(["30"], env={{}}, log_file=None, target={targets!r} + ":sleep_for")
print(fs.pid, child.pid, flush=True)
time.sleep(60)
"""


def test_server_exits_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT.format(targets=TARGETS)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    child_pid = None
    try:
        assert parent.stdout is not None
        server_pid, child_pid = map(int, parent.stdout.readline().split())
        parent.kill()  # kill -9 of the scheduler
        parent.wait()
        assert wait_gone(server_pid), "the fork server outlived its parent"
        assert psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE, "the try died too"
    finally:
        parent.kill()
        parent.wait()
        if child_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)


@pytest.mark.parametrize("coalesce", [True, False])
def test_a_burst_of_prints_is_coalesced_unless_the_setting_says_no(
    server: ForkServer, events: Events, tmp_path: Path, coalesce: bool
) -> None:
    """``[logging] coalesce_print_bursts`` reaches the try as the local executor passes it
    (``$KETCH_LOG_PUMP``); either way every printed line is in the log, in order."""
    from ketch.logs.pump.config import CONFIG_ENV, PumpConfig

    log = tmp_path / "burst.log"
    env = {} if coalesce else {CONFIG_ENV: PumpConfig(coalesce=False).to_env()}
    server.spawn([], env=env, log_file=str(log), target=f"{TARGETS}:print_a_burst")
    assert events.next_exits(1)[0].exit_code == 0
    lines = log.read_text().splitlines()
    summary = re.fullmatch(r"coalesced=(\w+) printed=(\d+)", lines[-1])
    assert summary is not None, lines[-3:]
    assert summary[1] == str(coalesce)
    assert lines[:-1] == [f"burst {i}" for i in range(int(summary[2]))]
