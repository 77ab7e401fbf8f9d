"""The log pump with real tries: a Python process whose fds 1 and 2 become the pump's pipe.

Each test writes a small try script (the header below plus its own body) and runs it
as a separate process, as ``ketch task run`` or the fork server runs a try: it calls
``pump.start(live file, PumpConfig(...))`` first, prints (through ``sys.stdout``, raw
``os.write`` on fd 1, child processes), then ends with ``handle.finish`` or kills itself
with SIGKILL. The try notes what the test needs to know (the pump's pid, answers)
in a side file, one ``name value`` line each. Nothing is asserted about how long
anything takes: a test waits (with a generous deadline) for what must happen.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import psutil
import pytest

from ketch.logs.archive.base import Completion
from ketch.logs.json_lines import decode_stream
from ketch.logs.pump.config import PumpConfig
from ketch.logs.pump.notes import NOTES_SUFFIX, add_note, note_line, take_notes

TRY_HEADER = r'''
import json, os, signal, subprocess, sys, time
from ketch.logs import pump
from ketch.logs.pump import handle as pump_handle, process as pump_process
from ketch.worker import secrets_mask

LOG, SIDE = sys.argv[1], sys.argv[2]
CONFIG = pump.PumpConfig(**json.loads(sys.argv[3]))


def note(name, value=""):
    with open(SIDE, "a") as fh:
        fh.write(f"{name} {value}\n")


def start(log=None):
    handle = pump.start(log or LOG, CONFIG)
    note("pump", handle.pid)
    return handle


def out(data):
    """Raw bytes on fd 1, as a C extension or a child process writes them."""
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def kill_self():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def finish(handle, timeout=20.0):
    note("finished", handle.finish(timeout))
    os._exit(0)
'''

DEADLINE = 30.0


@dataclass
class Try:
    proc: subprocess.Popen[bytes]
    log: Path
    side: Path
    stdout: Path

    def notes(self) -> dict[str, str]:
        if not self.side.exists():
            return {}
        pairs = (line.partition(" ") for line in self.side.read_text().splitlines())
        return {name: value for name, _, value in pairs}

    def note(self, name: str) -> str:
        wait_for(lambda: name in self.notes(), f"the try to note {name!r}")
        return self.notes()[name]

    @property
    def pump_pid(self) -> int:
        return int(self.note("pump"))

    def wait(self) -> int:
        return self.proc.wait(timeout=DEADLINE)


def wait_for(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for init to reap it counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def launch(
    tmp_path: Path,
    body: str,
    config: PumpConfig | None = None,
    *,
    log: Path | None = None,
    new_session: bool = False,
    env: dict[str, str] | None = None,
    stdin: int = subprocess.DEVNULL,
    stdout_pipe: bool = False,
) -> Try:
    script = tmp_path / f"try_{len(list(tmp_path.glob('try_*.py')))}.py"
    script.write_text(TRY_HEADER + body)
    log = log or tmp_path / "logs" / "attempt=1.log"
    side = script.with_suffix(".notes")
    stdout = script.with_suffix(".stdout")
    data = asdict(config or PumpConfig())
    with stdout.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(log), str(side), json.dumps(data)],
            stdout=subprocess.PIPE if stdout_pipe else out,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            start_new_session=new_session,
            env={**os.environ, **(env or {})},
        )
    return Try(proc, log, side, stdout)


def run(tmp_path: Path, body: str, config: PumpConfig | None = None, **kwargs: Any) -> Try:
    """Launch the try, wait for it; its pump must have ended with it (``finish``)."""
    started = launch(tmp_path, body, config, **kwargs)
    assert started.wait() == 0, started.stdout.read_bytes()[-2000:]
    assert started.notes().get("finished") == "True", started.notes()
    return started


def completion_of(log: Path) -> Completion:
    return Completion.from_json(json.loads(Path(f"{log}.complete").read_text()))


# -- every byte, also when the try is killed ---------------------------------------------


def test_every_line_survives_the_try_killing_itself_20_times(tmp_path: Path) -> None:
    """A driver forks 20 tries one after the other (as the fork server does); each
    starts its pump, prints 300 lines and a tail without newline, and SIGKILLs itself
    right after: every pump still writes every byte and its completion record."""
    body = r"""
for n in range(20):
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        start(f"{LOG}.{n}")
        for line in range(300):
            print(f"try {n} line {line} " + "x" * (line % 70))
        sys.stdout.flush()
        out(f"try {n} last words, no newline".encode())
        kill_self()
    _, status = os.waitpid(child, 0)
    note(f"status{n}", status)
"""
    driver = launch(tmp_path, body)
    assert driver.wait() == 0, driver.stdout.read_bytes()
    for n in range(20):
        assert os.WTERMSIG(int(driver.notes()[f"status{n}"])) == signal.SIGKILL
    for n in range(20):
        log = Path(f"{driver.log}.{n}")
        wait_for(Path(f"{log}.complete").exists, f"the pump of try {n} to complete")
        expected = "".join(
            f"try {n} line {line} " + "x" * (line % 70) + "\n" for line in range(300)
        )
        expected += f"try {n} last words, no newline"
        assert log.read_text() == expected, f"try {n}"
        assert completion_of(log).size == log.stat().st_size


def test_completion_record_after_a_normal_end_and_after_sigkill(tmp_path: Path) -> None:
    normal = run(tmp_path, 'handle = start()\nprint("one\\ntwo")\nfinish(handle)\n')
    assert normal.log.read_bytes() == b"one\ntwo\n"
    record = completion_of(normal.log)
    assert record.size == 8 and record.captured_by == "try" and record.ended_at

    killed = launch(
        tmp_path,
        'handle = start()\nprint("before the kill")\nkill_self()\n',
        log=tmp_path / "logs" / "attempt=2.log",
    )
    assert killed.wait() == -signal.SIGKILL
    wait_for(lambda: gone(killed.pump_pid), "the pump to end")
    assert killed.log.read_bytes() == b"before the kill\n"
    assert completion_of(killed.log).size == killed.log.stat().st_size == 16


def test_a_relaunched_try_appends_and_its_old_record_goes(tmp_path: Path) -> None:
    """A try relaunched on the same live file appends to it; the first run's completion
    record must not say the log is complete while the second run still writes."""
    run(tmp_path, 'handle = start()\nprint("first run")\nfinish(handle)\n')
    log = tmp_path / "logs" / "attempt=1.log"
    assert completion_of(log).size == 10
    second = run(
        tmp_path,
        'handle = start()\nprint("second run")\nhandle.problem()\n'
        'note("stale", os.path.exists(LOG + ".complete"))\nfinish(handle)\n',
    )
    assert second.notes()["stale"] == "False"
    assert log.read_bytes() == b"first run\nsecond run\n"
    assert completion_of(log).size == 21


# -- masking -----------------------------------------------------------------------------

SECRET = 'Tr0ub4dor&3 "é"/\\x'
EARLY = "registered-before-the-pump"


def test_secrets_are_masked_in_every_form_and_from_every_writer(tmp_path: Path) -> None:
    body = rf"""
S = {SECRET!r}
secrets_mask.mask_secret({EARLY!r})
handle = start()
secrets_mask.mask_secret(S)
print("early", {EARLY!r}, flush=True)
print("plain", S, flush=True)
subprocess.run(["bash", "-c", 'echo "from bash $SECRET"; printf "%s\\n" "$SECRET" >&2'],
               env={{**os.environ, "SECRET": S}}, check=True)
raw = S.encode()
out(b"split " + raw[:7])
handle.problem()  # the pump has read the first half before the second is written
out(raw[7:] + b" end\n")
from urllib.parse import quote, quote_plus
print("url", quote(S, safe=""), "plus", quote_plus(S), flush=True)
print(json.dumps({{"k": S}}), json.dumps(S, ensure_ascii=False), flush=True)
print("half", S[:6], "is not a secret", flush=True)
finish(handle)
"""
    done = run(tmp_path, body)
    data = done.log.read_bytes()
    expected = (
        "early ***\n"
        "plain ***\n"
        "from bash ***\n"
        "***\n"
        "split *** end\n"
        "url *** plus ***\n"
        '{"k": "***"} "***"\n'
        f"half {SECRET[:6]} is not a secret\n"
    )
    assert data.decode() == expected
    for form in (SECRET, quote(SECRET, safe=""), quote_plus(SECRET), json.dumps(SECRET)[1:-1]):
        assert form.encode() not in data


def test_a_secret_registered_right_after_a_question_is_masked(tmp_path: Path) -> None:
    """Output then ``problem()`` (the runner asks it after each step) reach the pump
    together; its answer drains the pipe. The pump must then still answer the next
    ``mask_secret`` at once: a pump blocked reading the empty pipe lets the try's wait
    for the acknowledgement time out, and the secret printed next goes out in clear."""
    body = r"""
handle = start()
for n in range(5):
    print(f"step {n}", flush=True)
    handle.problem()
    secrets_mask.mask_secret(f"late-secret-number-{n}")
    print(f"using late-secret-number-{n}", flush=True)
finish(handle)
"""
    done = run(tmp_path, body)
    assert done.log.read_text() == "".join(f"step {n}\nusing ***\n" for n in range(5))


def test_a_late_acknowledgement_is_not_taken_for_the_next_answer(tmp_path: Path) -> None:
    """The pod's stdout is slow (nobody reads it for a while): the pump is stuck echoing
    and ``mask_secret`` gives up waiting for its acknowledgement. The late ``K`` must not
    become the answer to the next question (the runner would fail the try with it)."""
    body = r"""
pump_handle._ACK_TIMEOUT = 0.5
handle = start()
out(b"x" * 100_000 + b"\n")  # more than the stdout pipe holds: the pump's echo blocks
secrets_mask.mask_secret("slow-ack-secret")
note("masked")
print("the slow-ack-secret", flush=True)
note("problem", handle.problem())
note("again", handle.problem())
finish(handle)
"""
    started = launch(tmp_path, body, PumpConfig(echo_stdout=True), stdout_pipe=True)
    started.note("masked")
    assert started.proc.stdout is not None
    echoed = started.proc.stdout.read()  # unblocks the pump, until the try's end
    assert started.wait() == 0
    notes = started.notes()
    assert (notes["problem"], notes["again"], notes["finished"]) == ("None", "None", "True")
    assert started.log.read_bytes() == b"x" * 100_000 + b"\nthe ***\n" == echoed


# -- the pod's stdout ------------------------------------------------------------------------

MIXED_BODY = r"""
handle = start()
secrets_mask.mask_secret("s3cr3t-value")
print("hello", flush=True)
print("the s3cr3t-value is masked on stdout too", flush=True)
out(b"binary \x00\x01\xff\xfe and invalid \xc3\x28 utf-8\n")
out("unicode é ✓ ".encode() * 3 + b"\n")
for p in range(0, 101, 25):
    out(f"\rprogress {p:3d}%".encode())
    time.sleep(0.3)  # quiet: the pump echoes the unfinished line (a partial record)
out(b"\n")
out(b"x" * 200_000 + b"\n")
sys.stderr.write("to stderr\n")
sys.stderr.flush()
out(b"no newline at the end")
finish(handle)
"""


def test_echo_on_stdout_is_the_file(tmp_path: Path) -> None:
    done = run(tmp_path, MIXED_BODY, PumpConfig(echo_stdout=True))
    data = done.log.read_bytes()
    assert b"the *** is masked" in data and data.endswith(b"no newline at the end")
    assert done.stdout.read_bytes() == data


def test_echo_as_json_lines_decodes_to_the_file(tmp_path: Path) -> None:
    meta = {"dag_id": "etl", "run_id": "r1", "task_id": "load", "try_number": 2}
    done = run(tmp_path, MIXED_BODY, PumpConfig(echo_stdout=True, json_format=True, meta=meta))
    data = done.log.read_bytes()
    echoed = done.stdout.read_bytes()
    assert decode_stream(echoed) == data
    records = [json.loads(line) for line in echoed.splitlines()]
    assert all({k: r[k] for k in meta} == meta for r in records)
    assert any(r.get("partial") and r["message"].startswith("\rprogress") for r in records)
    assert records[0]["message"] == "hello" and records[0]["level"] == "INFO"


def test_big_binary_and_progress_bar_output_passes_unchanged(tmp_path: Path) -> None:
    """A 10 MiB line without newline, every byte value, invalid UTF-8 and carriage-return
    progress bars reach the file as written (with a secret registered, so the masker
    scans all of it), and the JSON echo decodes to the same bytes."""
    body = r"""
handle = start()
secrets_mask.mask_secret("never-printed-secret")
out(b"0123456789" * 1_048_576)
out(bytes(range(256)) * 4)
out(b"\xff\xfe\xc3\x28 lone surrogate \xed\xa0\x80 cut \xe2\x82")
for p in range(0, 101, 10):
    out(f"\r[{'#' * (p // 10):<10}] {p}%".encode())
out(b"\r\n")
finish(handle)
"""
    expected = b"0123456789" * 1_048_576 + bytes(range(256)) * 4
    expected += b"\xff\xfe\xc3\x28 lone surrogate \xed\xa0\x80 cut \xe2\x82"
    expected += b"".join(f"\r[{'#' * (p // 10):<10}] {p}%".encode() for p in range(0, 101, 10))
    expected += b"\r\n"
    done = run(tmp_path, body, PumpConfig(echo_stdout=True, json_format=True))
    assert done.log.read_bytes() == expected
    assert decode_stream(done.stdout.read_bytes()) == expected
    assert completion_of(done.log).size == len(expected)


# -- a live file that cannot be written ----------------------------------------------------

PROBLEM_BODY = r"""
handle = start()
note("first", handle.problem())
for n in range(20_000):
    print(f"line {n} of output the file cannot take " + "y" * 60)
note("problem", handle.problem())
finish(handle)
"""


@pytest.mark.parametrize("where", ["dev-full", "under-a-file"])
def test_a_live_file_that_cannot_be_written_is_the_pumps_problem(
    tmp_path: Path, where: str
) -> None:
    """The try is not blocked (it writes 1.6 MB, far more than a pipe holds, and ends
    normally); ``problem()`` names the error and the file; the stdout echo goes on."""
    if where == "dev-full":
        log = tmp_path / "logs" / "attempt=1.log"
        log.parent.mkdir()
        log.symlink_to("/dev/full")
        error = "[Errno 28] No space left on device"
    else:
        (tmp_path / "a-file").write_text("")
        log = tmp_path / "a-file" / "attempt=1.log"
        error = "[Errno 20] Not a directory"
    done = run(tmp_path, PROBLEM_BODY, PumpConfig(echo_stdout=True), log=log)
    notes = done.notes()
    assert notes["problem"] == f"cannot write the task log: {error} ({log})"
    if where == "under-a-file":
        assert notes["first"] == notes["problem"]  # known before anything was written
    echoed = done.stdout.read_bytes().splitlines()
    assert len(echoed) == 20_000 and echoed[-1].startswith(b"line 19999 ")
    assert not Path(f"{log}.complete").exists()  # never a record of a log not written


# -- the pump's own life ---------------------------------------------------------------------


def test_the_pump_is_spared_by_a_killpg_of_the_try_and_ends_at_eof(tmp_path: Path) -> None:
    body = r"""
handle = start()
child = subprocess.Popen(["sleep", "60"])  # in the try's group, holding the pipe
note("child", child.pid)
for n in range(100):
    print("line", n)
sys.stdout.flush()
handle.problem()
note("ready")
time.sleep(60)
"""
    started = launch(tmp_path, body, new_session=True)
    started.note("ready")
    pump, child = started.pump_pid, int(started.note("child"))
    group = os.getpgid(started.proc.pid)
    assert os.getpgid(child) == group
    assert os.getpgid(pump) != group and os.getsid(pump) == pump
    assert not gone(pump)  # the sleeping child holds the pipe open
    os.killpg(group, signal.SIGKILL)
    assert started.wait() == -signal.SIGKILL
    wait_for(lambda: gone(pump), "the pump to end once nobody holds its pipe")
    wait_for(lambda: gone(child), "the try's child to be killed with its group")
    assert started.log.read_text() == "".join(f"line {n}\n" for n in range(100))
    assert completion_of(started.log).size == started.log.stat().st_size


def test_a_grandchild_holding_the_pipe_does_not_keep_the_pump_forever(tmp_path: Path) -> None:
    """The try ends while a background process it started still holds the pipe: the
    pump waits ``_ORPHAN_GRACE`` (set short in the try, before ``start``), then writes
    what it has and ends although the pipe is still open."""
    body = r"""
pump_process._ORPHAN_GRACE = 0.5
handle = start()
sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
note("sleeper", sleeper.pid)
print("the try's last line", flush=True)
note("finished", handle.finish(0.3))  # the pump cannot end yet: the pipe is open
os._exit(0)
"""
    started = launch(tmp_path, body)
    assert started.wait() == 0
    assert started.notes()["finished"] == "False"
    sleeper = int(started.note("sleeper"))
    try:
        wait_for(lambda: gone(started.pump_pid), "the orphaned pump to give up")
        assert not gone(sleeper)  # the pump ended without its end-of-file
        assert started.log.read_bytes() == b"the try's last line\n"
        assert completion_of(started.log).size == 20
    finally:
        os.kill(sleeper, signal.SIGKILL)


# -- lines of ketch's own ----------------------------------------------------------------------

STAMP = re.compile(rb"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\] ", re.MULTILINE)


def test_the_schedulers_notes_are_written_between_the_trys_lines(tmp_path: Path) -> None:
    """Lines the scheduler's log keeper leaves in ``{live file}.notes`` are written by the
    pump, never inside a line of the try's: a note waits for the line it came in to end,
    and at the pump's end a line left unfinished gets a newline before them."""
    from tests.unit.test_log_shipper import COMMANDED, Commanded

    running = Commanded(launch(tmp_path, COMMANDED, PumpConfig(), stdin=subprocess.PIPE))
    notes = Path(f"{running.log}{NOTES_SUFFIX}")
    running.send("print first")
    add_note(running.log, note_line("one"))
    wait_for(lambda: b"ketch: one\n" in running.log.read_bytes(), "the pump to write a note")
    assert not notes.exists()
    running.send("partial half a line")
    add_note(running.log, note_line("two"))
    wait_for(lambda: not notes.exists(), "the pump to take the note")
    assert b"two" not in running.log.read_bytes()  # the line is not over
    running.send("print  and its end")
    wait_for(lambda: b"ketch: two\n" in running.log.read_bytes(), "the note after the line")
    running.send("partial cut short")
    add_note(running.log, note_line("three"))
    wait_for(lambda: not notes.exists(), "the pump to take the last note")
    assert running.finish()
    data = running.log.read_bytes()
    assert STAMP.sub(b"[T] ", data) == (
        b"first\n[T] ketch: one\nhalf a line and its end\n[T] ketch: two\n"
        b"cut short\n[T] ketch: three\n"
    )
    assert completion_of(running.log).size == len(data)


def test_notes_are_taken_once_and_a_taken_file_is_not_written_to(tmp_path: Path) -> None:
    live = tmp_path / "attempt=1.log"
    assert take_notes(live) == b""
    add_note(live, b"a\n")
    add_note(live, b"b\n")
    assert take_notes(live) == b"a\nb\n"
    assert take_notes(live) == b""
    add_note(live, b"c\n")  # a new file after the taken one was removed
    assert take_notes(live) == b"c\n"
