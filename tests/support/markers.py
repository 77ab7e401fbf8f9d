"""Marker files: every execution of a task's code leaves one line, so a test can see what ran.

The task code itself writes the marker (not ketch), once per execution, before it does
anything else: ``dag_id run_id task_id try_number pid``, appended with one ``write()`` to
an ``O_APPEND`` file per task instance under a markers folder. A try whose code ran
twice shows two lines with the same try number; a retried task legitimately shows one
line per try. A try killed before its code ran leaves no line.

:data:`MARK_FUNCTION` is the source of the writer, pasted into generated DAG files (a task
try imports only its DAG file and ketch, never the tests package).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MARK_FUNCTION = '''
def mark(ctx):
    """One line per execution of task code: dag run task try pid (see tests/support/markers.py)."""
    line = f"{ctx['dag_id']} {ctx['run_id']} {ctx['task_id']} {ctx['try_number']} {os.getpid()}\\n"
    name = os.path.join(MARKS, f"{ctx['dag_id']}.{ctx['task_id']}.marks")
    fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
'''


@dataclass(frozen=True)
class Marker:
    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    pid: int


def read_markers(folder: Path, dag_id: str | None = None) -> list[Marker]:
    """Every marker line under ``folder`` (of ``dag_id`` only, when given)."""
    markers: list[Marker] = []
    for path in sorted(folder.glob("*.marks")):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) != 5:
                raise AssertionError(f"malformed marker line in {path.name}: {line!r}")
            dag, run, task, try_number, pid = fields
            if dag_id is None or dag == dag_id:
                markers.append(Marker(dag, run, task, int(try_number), int(pid)))
    return markers


def executions(markers: list[Marker]) -> Counter[tuple[str, int]]:
    """How many times the code of each (task_id, try_number) ran."""
    return Counter((m.task_id, m.try_number) for m in markers)


def marker_pids(folder: Path) -> set[int]:
    """The pid of every process that wrote a marker (task tries)."""
    return {m.pid for m in read_markers(folder)}
