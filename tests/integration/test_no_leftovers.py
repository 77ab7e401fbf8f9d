"""A test run leaves nothing behind: no process, no temporary folder.

A few tests of the suite run in a pytest of their own, with a TMPDIR of their own: a
standalone scheduler with its fork server, on PostgreSQL, whose task try SIGSTOPs
itself (a stopped process acts on nothing but SIGKILL and SIGCONT, so it outlived its
test until ``tests.support.cleanup``). Afterwards no process of that run may be alive
and the TMPDIR must be as empty as it was given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.support.cleanup import kill_processes

ROOT = Path(__file__).resolve().parents[2]

# Fast tests that start a scheduler, the fork server and PostgreSQL, and SIGSTOP a try.
SUBSET = [
    "tests/integration/test_end_to_end.py::test_zombie_try_is_detected_and_failed[local-postgresql]",
]


def _mentions(proc: psutil.Process, marks: list[str]) -> bool:
    """The process belongs to the run: its command line or its environment (TMPDIR, the
    try's and the servers' own) names the run's folders."""
    try:
        text = " ".join(proc.cmdline())
        if any(mark in text for mark in marks):
            return True
        return any(mark in value for value in proc.environ().values() for mark in marks)
    except psutil.Error:
        return False


def _is_ketch_or_postgres(proc: psutil.Process) -> bool:
    try:
        text = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return False
    return "ketch" in text or "postgres" in text


def survivors(before: set[int], marks: list[str]) -> list[psutil.Process]:
    return [
        proc
        for proc in psutil.process_iter()
        if proc.pid not in before and _is_ketch_or_postgres(proc) and _mentions(proc, marks)
    ]


def test_a_test_run_leaves_no_process_and_no_temporary_folder(tmp_path: Path) -> None:
    # A TMPDIR the PostgreSQL user can reach (tmp_path's parents are private to us).
    tmpdir = Path(tempfile.mkdtemp(prefix="no-leftovers-"))
    tmpdir.chmod(0o755)
    basetemp = tmp_path / "basetemp"  # pytest's own tmp_path folders: kept, by design
    marks = [str(tmpdir), str(basetemp)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KETCH", "PYTEST_"))}
    env["TMPDIR"] = str(tmpdir)
    before = {proc.pid for proc in psutil.process_iter()}
    left: list[psutil.Process] = []
    started = time.monotonic()
    try:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--basetemp={basetemp}",
                *SUBSET,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        took = time.monotonic() - started
        output = f"pytest exited {run.returncode} after {took:.0f} s:\n{run.stdout[-6000:]}"
        left = survivors(before, marks)
        described = [f"{p.pid} {p.status()} {' '.join(p.cmdline())}" for p in left]
        assert described == [], f"processes left behind: {described}\n{output}"
        entries = sorted(entry.name for entry in tmpdir.iterdir())
        assert entries == [], f"left in TMPDIR: {entries}\n{output}"
        # The subset itself must pass: otherwise it may have stopped before the SIGSTOP.
        assert run.returncode == 0, output
        assert "1 passed" in run.stdout, output
    finally:
        kill_processes(left or survivors(before, marks))
        shutil.rmtree(tmpdir, ignore_errors=True)
