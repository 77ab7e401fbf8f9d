"""The try from its first line to its exit code: ``ketch task run``'s arguments, start
(a 409 means another process owns this try: exit without running anything), the task
with its heartbeat, its callbacks, the report, and the log's last lines; ``--log-file``
starts the try's log pump first (a pod)."""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import sys
import time
from pathlib import Path

from ketch.worker.client import ExecutionApiClient, TryStateConflict
from ketch.worker.runner.children import kill_children
from ketch.worker.runner.heartbeat import Heartbeat
from ketch.worker.runner.outcome import Outcome
from ketch.worker.runner.output import say
from ketch.worker.runner.report import Cancelled, log_problem, report, with_log_problem
from ketch.worker.runner.stopping import SIGTERM_RECEIVED, note_sigterm
from ketch.worker.runner.task import run_task


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
    signal.signal(signal.SIGTERM, note_sigterm)
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
