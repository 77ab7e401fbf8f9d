"""What one task try runs: ``ketch task run DAG_ID TASK_ID RUN_ID --try N``.

The same code runs in a process forked by the local executor's fork server and
as a pod's command. It only talks HTTP to the execution API (never the
database): start (a 409 means another process owns this try, so exit without
running anything), load the DAG file, run the task under its execution_timeout
while a thread heartbeats, check the return value, finish. Output is plain text
on stdout (``kubectl logs`` works); ``--log-file`` tees it to a file as well. A try
whose log cannot be written (a full disk) fails with a reason that says so.

A try stopped from outside ends its log with one line saying why, never with ketch's
own traceback: ``try cancelled: ...`` when the task instance was cleared, marked or its
run cancelled (a heartbeat or the finish call is answered 401 "try has ended", or the
scheduler's SIGTERM arrives first), ``try stopped: ...`` for an execution_timeout or a
SIGTERM from elsewhere (the outcome is then recorded as failed).

Imports stay light on purpose: no SQLAlchemy, FastAPI, Uvicorn, Alembic,
``ketch.db`` or ``ketch.api`` here (a test checks ``sys.modules``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from ketch.exceptions import FailTask, KetchException, RescheduleTask, SkipTask, TaskTimeout
from ketch.worker.client import (
    ExecutionApiClient,
    ExecutionApiError,
    TryEnded,
    TryStateConflict,
)

ENV_DAGS_FOLDER = "KETCH_DAGS_FOLDER"
_CHILD_GRACE_SECONDS = 3.0


class TaskTerminated(KetchException):
    """The try received SIGTERM (cancelled, or killed by the executor's timeout backstop)."""


@dataclass
class Outcome:
    """How the task ended, in the shape ``POST /execution/try/finish`` takes."""

    state: str  # success | failed | skipped | up_for_reschedule
    error: str | None = None
    return_value: Any = None
    has_return_value: bool = False
    follow_task_ids: list[str] | None = None
    # Further XComs by key (encoded like return_value): ``multiple_outputs``.
    xcoms: dict[str, Any] | None = None
    retry: bool = True
    reschedule_date: str | None = None  # ISO 8601, with up_for_reschedule
    kill_children: bool = field(default=False, repr=False)
    # Why the try was stopped (a SIGTERM, its execution_timeout): its log's last line.
    stopped: str | None = field(default=None, repr=False)
    # The instance's name from its map_index_template (ketch.authoring.map_index_template).
    rendered_map_index: str | None = None


def _stamped(message: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"[{stamp}] ketch: {message}"


def say(message: str) -> None:
    """One timestamped line of the runner's own output."""
    print(_stamped(message), flush=True)


# -- child processes -----------------------------------------------------------------

_doomed: list[Any] = []  # psutil.Process snapshots taken when a timeout fired


def _descendants() -> list[Any]:
    import psutil

    from ketch.logs.pump import pump_pid

    spare = pump_pid()
    try:
        return [p for p in psutil.Process().children(recursive=True) if p.pid != spare]
    except psutil.Error:
        return []


def _signal_all(procs: list[Any], sig: int) -> None:
    import psutil

    for proc in procs:
        with suppress(psutil.Error):
            proc.send_signal(sig)


def kill_children() -> None:
    """Stop everything the task started: descendants and the rest of our process group.

    A bash task's ``sleep`` may already be orphaned (its bash was killed), so the
    snapshot taken when the timeout fired and a ``killpg`` of our own group (we are
    its leader when forked by the fork server) catch what ``children()`` no longer sees.
    """
    procs = {p.pid: p for p in [*_doomed, *_descendants()]}
    _signal_all(list(procs.values()), signal.SIGTERM)
    if os.getpgrp() == os.getpid():
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            os.killpg(os.getpgrp(), signal.SIGTERM)
        finally:
            signal.signal(signal.SIGTERM, previous)
    _signal_all(_wait_gone(list(procs.values()), _CHILD_GRACE_SECONDS), signal.SIGKILL)
    _doomed.clear()


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Wait until the processes are gone (or zombies nobody reaped yet); return the rest."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for proc in procs:
            with suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def terminate_whole_group(last_line: str) -> None:
    """Kill the try and everything it started, now (its state was changed externally),
    with ``last_line`` as the last line of its log.

    This process stops writing first (its output so far is flushed, then fds 1 and 2
    go to /dev/null: the task's reaction to its children dying, a traceback, is not
    logged), the processes the task started are killed (SIGKILL: they write nothing
    more), the line is written, and the whole process group is killed, this one too.
    """
    from ketch.worker.task_log import drain_output

    drain_output()
    log_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    children = _descendants()
    _signal_all(children, signal.SIGKILL)
    _wait_gone(children, 1.0)
    with suppress(OSError):
        os.write(log_fd, (_stamped(last_line) + "\n").encode())
    drain_output()  # a pod's tee reads the line from the pipe log_fd writes to
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)  # PID 1 of a container ignores its own SIGKILL


# -- why a try was stopped from outside ------------------------------------------------

_ENDED_DETAIL = re.compile(
    r"task instance is (?P<state>\w+) with try_number (?P<ti_try>\d+), this is try (?P<mine>\d+)"
)


def why_ended(detail: str) -> str:
    """What happened to the task instance, from the execution API's 401 "try has ended"
    (or 409) detail, in words; anything the server adds after the states (who did it)
    is kept."""
    if "no longer exists" in detail:
        return "the task instance no longer exists (its run or DAG was deleted)"
    match = _ENDED_DETAIL.search(detail)
    if match is None:
        return detail
    state, ti_try, mine = match["state"], int(match["ti_try"]), int(match["mine"])
    guess = ""
    if ti_try > mine:
        what = f"the task instance was cleared and try {ti_try} has replaced this one"
    elif state in ("none", "scheduled"):
        what = "the task instance was cleared"
    elif state == "success":
        what = "the task instance was marked success"
    elif state == "failed":
        what, guess = (
            "the task instance was set to failed",
            "marked failed, or its run was cancelled",
        )
    elif state == "skipped":
        what, guess = "the task instance was set to skipped", "marked skipped, or its run timed out"
    else:
        what = f"the task instance was set to {state} from outside"
    # What the server adds after the states (who did it) beats a guess.
    more = detail[match.end() :].strip(" .;:()")
    if more:
        return f"{what}: {more}"
    return f"{what} ({guess})" if guess else what


SIGTERM_RECEIVED = "received SIGTERM"
# SIGTERM arrived when the task was not running (before it started, while reporting).
_sigterm_noted = threading.Event()


def _note_sigterm(_signum: int, _frame: FrameType | None) -> None:
    _sigterm_noted.set()


# -- timeout, termination, heartbeat -------------------------------------------------


@contextmanager
def execution_timeout(seconds: float | None) -> Iterator[None]:
    """Raise TaskTimeout in the main thread after ``seconds`` (setitimer, so sub-second works)."""
    if not seconds or seconds <= 0:
        yield
        return

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        doomed = _descendants()
        _doomed.extend(doomed)
        _signal_all(doomed, signal.SIGTERM)  # so a blocking wait on a child returns
        raise TaskTimeout(f"execution_timeout of {seconds:g}s exceeded")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise TaskTerminated("task received SIGTERM")


class Heartbeat:
    """Tells the API every interval that the try lives; a 409 ends the whole try at once.

    ``stop()`` waits for an in-flight heartbeat, so no heartbeat can race the
    finish call and misread the try's own outcome as an external change.
    """

    def __init__(self, client: ExecutionApiClient, interval: float) -> None:
        self._client = client
        self._interval = interval
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ketch-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            with self._lock:
                if self._stopped.is_set():
                    return
                self._beat()

    def _beat(self) -> None:
        try:
            self._client.heartbeat()
        except TryStateConflict as exc:
            terminate_whole_group(
                f"try cancelled: {why_ended(exc.detail)}; its processes were killed"
            )
        except ExecutionApiError as exc:
            say(f"heartbeat failed: {exc}")


# -- running the task ----------------------------------------------------------------


def dag_file(payload: dict[str, Any]) -> str:
    """The DAG file: under $KETCH_DAGS_FOLDER when set (a pod), else the scheduler's path."""
    folder = os.environ.get(ENV_DAGS_FOLDER)
    if folder:
        return str(Path(folder) / payload["relative_fileloc"])
    return str(payload["fileloc"])


def encode_return_value(task_id: str, value: Any, max_size: int) -> tuple[Any, str | None]:
    """The value as it is stored and sent downstream (tagged JSON, see
    :mod:`ketch.worker.serde`, so a ``datetime`` or a tuple arrives as one), and why it
    cannot be stored (None when it can)."""
    from ketch.worker.serde import encode

    try:
        encoded = encode(value)
        text = json.dumps(encoded, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return None, f"return value of task {task_id!r} is not JSON-serialisable: {exc}"
    size = len(text.encode())
    if size > max_size:
        return None, (
            f"return value of task {task_id!r} is {size} bytes of JSON, "
            f"more than max_xcom_size ({max_size} bytes)"
        )
    return encoded, None


def check_return_value(task_id: str, value: Any, max_size: int) -> str | None:
    """Why the return value cannot be stored, or None when it can."""
    return encode_return_value(task_id, value, max_size)[1]


def _xcom_puller(client: ExecutionApiClient) -> Any:
    # None when there is no value, unless the task takes it as an argument (see upstream).
    from ketch.worker.upstream import xcom_puller

    return xcom_puller(client)


def _rendered_fields_reporter(client: ExecutionApiClient) -> Any:
    """Sends a task's rendered template fields (already masked) to the execution API, so
    the API shows them for this try. A try that was cleared or ended meanwhile stops at
    once, as at a heartbeat; any other refusal is only logged."""

    def send(fields: dict[str, Any]) -> None:
        try:
            client._call("PUT", "/try/rendered-fields", {"rendered_fields": fields})
        except TryStateConflict as exc:
            terminate_whole_group(
                f"try cancelled: {why_ended(exc.detail)}; its processes were killed"
            )
        except ExecutionApiError as exc:
            say(f"rendered template fields not recorded: {exc}")

    return send


def _failure(exc: BaseException, *, retry: bool = True, show: bool = True) -> Outcome:
    if show:
        traceback.print_exception(exc, file=sys.stdout)
        sys.stdout.flush()
    message = str(exc) or type(exc).__name__
    return Outcome("failed", error=f"{type(exc).__name__}: {message}", retry=retry)


_KETCH_DIR = str(Path(__file__).resolve().parents[1])


def _show_where_stopped(exc: BaseException) -> None:
    """Where the task's own code was when it was stopped (ketch's frames left out)."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not str(Path(frame.filename).resolve()).startswith(_KETCH_DIR)
    ]
    if frames:
        say("the task was here when it was stopped:")
        print("".join(traceback.format_list(frames)), end="", flush=True)


def _stopped(exc: TaskTimeout | TaskTerminated, payload: dict[str, Any], began: float) -> Outcome:
    """The outcome of a task stopped by its timeout or a SIGTERM: no traceback of ketch's;
    for a timeout, where the task's own code was."""
    outcome = _failure(exc, show=False)
    outcome.kill_children = True
    timeout = payload.get("execution_timeout")
    if isinstance(exc, TaskTimeout):
        outcome.stopped = str(exc)
    elif timeout and time.monotonic() - began >= float(timeout):
        # The executor's backstop: the task outlived its timeout without stopping.
        outcome.stopped = f"execution_timeout of {float(timeout):g}s exceeded (SIGTERM)"
    else:
        # The scheduler's cancel (the finish call then says what happened), or a kill,
        # a pod eviction, a node drain.
        outcome.stopped = SIGTERM_RECEIVED
        return outcome
    _show_where_stopped(exc)
    return outcome


def run_task(payload: dict[str, Any], client: ExecutionApiClient, dag: Any = None) -> Outcome:
    """Load the DAG (unless given: ``ketch dags test`` runs its in-memory DAG) and run the
    task here, turning every way it can end into an Outcome, named by its
    map_index_template: rendered strictly after a success (inside :func:`_run_task`), and
    quietly after any other end, as Airflow's task runner does."""
    from ketch.authoring.map_index_template import render_map_index

    outcome = _run_task(payload, client, dag)
    if outcome.state != "success":
        rendered = render_map_index(strict=False, task_id=payload["task_id"])
        outcome = replace(outcome, rendered_map_index=rendered)
    return outcome


def _run_task(payload: dict[str, Any], client: ExecutionApiClient, dag: Any) -> Outcome:
    from ketch.authoring.context import build_context
    from ketch.authoring.loader import load_dag
    from ketch.authoring.map_index_template import render_map_index
    from ketch.authoring.templating import reporting_to

    task_id = payload["task_id"]
    began = time.monotonic()
    try:
        if _sigterm_noted.is_set():
            raise TaskTerminated("task received SIGTERM")
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            context = build_context(payload)
            dag = dag if dag is not None else load_dag(dag_file(payload), payload["dag_id"])
            task = dag.get_task(task_id)
            # From the serialized task (defaults resolved at parse time): reading the task's
            # own property could import the settings stack into the try.
            with (
                execution_timeout(payload.get("execution_timeout")),
                reporting_to(_rendered_fields_reporter(client)),
            ):
                result = task.execute(context, _xcom_puller(client))
                rendered = render_map_index(strict=True)
            problem = _mapping_problem(task, result, payload)
        finally:
            signal.signal(signal.SIGTERM, _note_sigterm)
    except SkipTask as exc:
        say(f"task skipped: {exc}" if str(exc) else "task skipped")
        return Outcome("skipped")
    except RescheduleTask as exc:
        when = exc.reschedule_date.isoformat()
        say(f"rescheduling: the task runs again (a new try) at {when}")
        return Outcome("up_for_reschedule", reschedule_date=when)
    except FailTask as exc:
        return _failure(exc, retry=False)
    except (TaskTimeout, TaskTerminated) as exc:
        return _stopped(exc, payload, began)
    except TryStateConflict as exc:
        # The task's own call (Variable.get, an XCom) found the try over: the finish
        # call will be refused the same way and say so in one line.
        return _failure(exc, show=False)
    except Exception as exc:
        return _failure(exc)
    except SystemExit as exc:
        return _failure(RuntimeError(f"task called sys.exit({exc.code!r})"))
    if problem:
        say(problem)
        return Outcome("failed", error=problem)
    return replace(_success(task_id, result, payload), rendered_map_index=rendered)


def _mapping_problem(task: Any, result: Any, payload: dict[str, Any]) -> str | None:
    """Why the value cannot be mapped over downstream (see ketch.authoring.mapped)."""
    from ketch.authoring.mapped import push_problem

    if not hasattr(result, "push_return_value"):
        return None
    return push_problem(task, result, int(payload.get("max_map_length") or 1024))


def _success(task_id: str, result: Any, payload: dict[str, Any]) -> Outcome:
    """A finished task's outcome. Its return value is always stored, ``None`` included
    (as JSON null): a downstream task taking it then receives ``None``, as in Airflow,
    while an upstream marked success without running (no value at all) still fails a
    task that needs its value with a message naming both (:mod:`ketch.worker.upstream`)."""
    value = getattr(result, "return_value", None)
    follow = getattr(result, "follow_task_ids", None)
    if getattr(result, "push_return_value", True) is False:
        # A short-circuit that skips stores no value (Airflow raises before pushing it).
        return Outcome("success", follow_task_ids=list(follow) if follow is not None else None)
    encoded, problem = encode_return_value(task_id, value, int(payload["max_xcom_size"]))
    xcoms, xcoms_problem = _encode_xcoms(task_id, getattr(result, "xcoms", None), payload)
    problem = problem or xcoms_problem
    if problem:
        say(problem)
        return Outcome("failed", error=problem)
    return Outcome(
        "success",
        return_value=encoded,
        has_return_value=True,
        follow_task_ids=list(follow) if follow is not None else None,
        xcoms=xcoms,
    )


def _encode_xcoms(
    task_id: str, xcoms: dict[str, Any] | None, payload: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """Each further XCom encoded like a return value, or why one cannot be stored."""
    if not xcoms:
        return None, None
    out: dict[str, Any] = {}
    for key, value in xcoms.items():
        encoded, problem = encode_return_value(task_id, value, int(payload["max_xcom_size"]))
        if problem:
            return None, f"XCom {key!r}: {problem}"
        out[key] = encoded
    return out, None


class Cancelled(Exception):
    """The execution API says the try is over (cleared, marked, its run cancelled)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def report(client: ExecutionApiClient, outcome: Outcome) -> bool:
    """Send the outcome; False when the API would not take it. Raises :class:`Cancelled`
    when the try has ended from outside (its outcome no longer matters)."""
    try:
        client.finish(
            outcome.state,
            error=outcome.error,
            return_value=outcome.return_value,
            has_return_value=outcome.has_return_value,
            follow_task_ids=outcome.follow_task_ids,
            xcoms=outcome.xcoms,
            retry=outcome.retry,
            reschedule_date=outcome.reschedule_date,
            rendered_map_index=outcome.rendered_map_index,
        )
    except TryEnded as exc:
        raise Cancelled(why_ended(exc.detail)) from exc
    except TryStateConflict as exc:
        say(f"outcome not recorded, task instance changed externally: {exc.detail}")
        return False
    except ExecutionApiError as exc:
        if exc.status == 413 and outcome.state == "success":
            say(exc.detail)
            failed = Outcome("failed", error=exc.detail)
            return report(client, replace(failed, rendered_map_index=outcome.rendered_map_index))
        say(f"outcome not recorded: {exc}")
        return False
    return True


def log_problem() -> str | None:
    """Why this try's log could not be written (see ``ketch.worker.task_log``), or None."""
    from ketch.worker.task_log import write_problem

    return write_problem()


def with_log_problem(outcome: Outcome) -> Outcome:
    """A try whose log could not be written while it ran fails, saying so."""
    problem = log_problem()
    if problem is None:
        return outcome
    say(problem)
    if outcome.state == "failed":
        return replace(outcome, error=f"{outcome.error}; also {problem}")
    return Outcome("failed", error=problem)


def run_try(args: argparse.Namespace) -> int:
    """Start, run, finish one try; the exit code says whether the task succeeded."""
    from ketch.worker.callbacks import run_state_callbacks

    hostname = socket.gethostname()
    mapped = f" map_index={args.map_index}" if args.map_index >= 0 else ""
    say(
        f"dag={args.dag_id} task={args.task_id}{mapped} run={args.run_id} "
        f"try={args.try_number} host={hostname} pid={os.getpid()}"
    )
    client = ExecutionApiClient.from_env()
    # A SIGTERM outside the task itself is noted, not fatal: the try still reports and
    # says why it stopped (the executor's SIGKILL follows a few seconds later anyway).
    signal.signal(signal.SIGTERM, _note_sigterm)
    try:
        payload = client.start(os.getpid(), hostname)
    except TryStateConflict as exc:
        say(f"not running the task: {exc.detail}")
        return 0
    problem = log_problem()
    if problem is not None:
        # Its output would be lost: fail the try (it retries as usual) rather than run blind.
        say(problem)
        outcome = Outcome("failed", error=problem)
    else:
        heartbeat = Heartbeat(client, float(payload.get("heartbeat_interval") or 5.0))
        heartbeat.start()
        try:
            outcome = run_task(payload, client)
        finally:
            heartbeat.stop()
        if outcome.kill_children:
            kill_children()
        outcome = with_log_problem(outcome)
        run_state_callbacks(payload, outcome)
    try:
        recorded = report(client, outcome)
    except Cancelled as exc:
        how = (
            "stopped by the scheduler"
            if outcome.stopped == SIGTERM_RECEIVED
            else "its outcome was not recorded"
        )
        _last_words(f"try cancelled: {exc.why}; {how}")
        return 1
    if outcome.stopped:
        _last_words(
            f"try stopped: {outcome.stopped}; "
            + ("recorded as failed" if recorded else "its outcome was not recorded")
        )
        return 1
    say(f"task {outcome.state}" + (f": {outcome.error}" if outcome.error else ""))
    say(f"try ended; process lived {process_age_ms():.1f} ms")
    return 0 if outcome.state != "failed" and recorded else 1


def _last_words(line: str) -> None:
    """End the log of a try stopped from outside: how long it lived, then ``line``."""
    say(f"try ended; process lived {process_age_ms():.1f} ms")
    say(line)


def process_age_ms() -> float:
    """Milliseconds since this process began: the fork (fork server) or the exec."""
    forked_at = os.environ.get("KETCH_PROCESS_STARTED_AT")
    if forked_at:
        return (time.time() - float(forked_at)) * 1000
    import psutil

    return (time.time() - psutil.Process().create_time()) * 1000


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ketch task run", description="Run one task try.")
    parser.add_argument("dag_id")
    parser.add_argument("task_id")
    parser.add_argument("run_id")
    parser.add_argument("--try", dest="try_number", type=int, required=True)
    parser.add_argument("--map-index", dest="map_index", type=int, default=-1)
    parser.add_argument("--log-file", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Entry point of ``ketch task run`` and ``python -m ketch.worker.runner``."""
    args = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # a live log follows the task's prints
    if args.log_file is None:
        return run_try(args)
    from ketch.logs import pump
    from ketch.worker.task_log import guard_output

    config = pump.PumpConfig.from_env(pump.meta_from_argv(argv))
    config.echo_stdout = True  # a pod: kubectl logs and log collectors read its stdout
    handle = pump.start(str(args.log_file), config)
    guard_output(str(args.log_file), coalesce=config.coalesce)
    try:
        return run_try(args)
    finally:
        handle.finish(timeout=pump.default_finish_timeout(config))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
