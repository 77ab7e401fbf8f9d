"""Targets the fork server tests run in forked children (instead of a task try)."""

from __future__ import annotations

import os
import random
import signal
import sys
import time


def exit_with(argv: list[str]) -> int:
    """Print the argv, an env var and a random number, then exit with argv[0]."""
    print(f"argv={argv} env={os.environ.get('TARGET_ENV')} random={random.random()}")
    print(f"sid={os.getsid(0)} pid={os.getpid()}", file=sys.stderr)
    return int(argv[0])


def sleep_for(argv: list[str]) -> int:
    time.sleep(float(argv[0]))
    return 0


def kill_self(argv: list[str]) -> int:
    os.kill(os.getpid(), int(argv[0]))
    time.sleep(10)
    return 0


def report_modules(argv: list[str]) -> int:
    """Print whether heavy modules are loaded (a forked try must not carry them)."""
    print(sorted(m for m in sys.modules if m.split(".")[0] in {"sqlalchemy", "fastapi"}))
    return 0


def ignore_sigterm(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(float(argv[0]))
    return 0


def describe_dag(argv: list[str]) -> int:
    """Print whether the DAG file was inherited pre-imported, and the DAG's task ids."""
    from ketch.authoring import loader

    path, dag_id = argv
    inherited = os.path.abspath(path) in loader._preloaded
    dag = loader.load_dag(path, dag_id)
    print(f"inherited={inherited} tasks={sorted(dag.tasks)}")
    return 0


def print_a_burst(argv: list[str]) -> int:
    """Print until stdout leaves line buffering (or 200k lines), then say whether it did
    and how many lines were printed."""
    printed = 0
    while sys.stdout.line_buffering and printed < 200_000:
        print(f"burst {printed}")
        printed += 1
    coalesced = not sys.stdout.line_buffering
    print(f"coalesced={coalesced} printed={printed}", flush=True)
    return 0
