"""Crash safety of a mapped task group's expansion: ``ketch standalone`` SIGKILLs itself at
a commit boundary — the group's root task expanding (``expansion.before_commit``), a chained
task of the group expanding into undecided instances (``mapped_group.before_commit``,
``mapped_group.after_commit``) — is restarted without the fault, and the run finishes with
exactly N instances of each task of the group, each run once."""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from ketch.db.models import TaskInstance
from ketch.faults import ENV as FAULT_ENV
from tests.support.ketch_process import Api, KetchEnv, KetchProcess, wait_for

N = 3

DAG_SOURCE = f"""
import os
from datetime import datetime, timezone

from ketch import dag, get_current_context, task, task_group

MARKS = os.environ["E2E_MARKS"]


def mark(name):
    ctx = get_current_context()
    with open(os.path.join(MARKS, f"{{name}}.{{ctx['map_index']}}"), "a") as f:
        f.write(f"{{ctx['try_number']}}\\n")


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     is_paused_upon_creation=False)
def crash_group():
    @task
    def items():
        return list(range({N}))

    @task
    def first(i):
        mark("first")
        return i * 10

    @task
    def second(v):
        mark("second")
        return v + 1

    @task
    def total(values):
        return sum(values)

    @task_group
    def tg(i):
        return second(first(i))

    total(tg.expand(i=items()))


crash_group()
"""


def _states(db_url: str, run_id: str) -> dict[str, dict[int, str | None]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
                    TaskInstance.run_id == run_id
                )
            ).all()
    finally:
        engine.dispose()
    out: dict[str, dict[int, str | None]] = {}
    for row in rows:
        out.setdefault(row.task_id, {})[row.map_index] = row.state
    return out


# Each point on one database, the group's own commit boundary on both (each kill-and-restart
# run costs CI about a minute).
@pytest.mark.parametrize(
    ("point", "db_url"),
    [
        ("expansion.before_commit", "sqlite"),
        ("mapped_group.before_commit", "sqlite"),
        ("mapped_group.before_commit", "postgresql"),
        ("mapped_group.after_commit", "postgresql"),
    ],
    indirect=["db_url"],
)
def test_killed_while_a_group_expands_the_run_completes_each_instance_once(
    ketch_home: Path, db_url: str, tmp_path: Path, point: str
) -> None:
    dags, marks = tmp_path / "dags", tmp_path / "marks"
    dags.mkdir()
    marks.mkdir()
    (dags / "crash_group.py").write_text(DAG_SOURCE)
    env = KetchEnv(
        home=ketch_home, db_url=db_url, dags_folder=dags, extra={"E2E_MARKS": str(marks)}
    )
    api = Api(env.base_url)
    doomed = KetchProcess(
        replace(env, extra={**env.extra, FAULT_ENV: point}), "standalone", name="doomed"
    )
    doomed.start()
    survivor: KetchProcess | None = None
    try:
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("crash_group"), 60, 0.1, "crash_group parsed")
        run_id = str(api.trigger("crash_group")["dag_run_id"])
        deadline = time.monotonic() + 90
        while doomed.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert doomed.proc is not None and doomed.proc.returncode == -signal.SIGKILL
        assert f"fault point {point} reached" in doomed.output()
        killed = _states(db_url, run_id)
        if point == "expansion.before_commit":
            assert killed["tg.first"] == {-1: None}  # the root's expansion was lost
        if point == "mapped_group.before_commit":
            assert killed["tg.second"] == {-1: None}  # so was the chained task's
        if point == "mapped_group.after_commit":
            assert sorted(killed["tg.second"]) == list(range(N))
        survivor = KetchProcess(env, "standalone", name="survivor").start()
        wait_for(api.healthy, 60, 0.05, "web server after the restart")
        run = api.wait_run_finished("crash_group", run_id, 120)
        assert run["state"] == "success"
        states = _states(db_url, run_id)
        assert states["tg.first"] == dict.fromkeys(range(N), "success")
        assert states["tg.second"] == dict.fromkeys(range(N), "success")
        assert states["total"] == {-1: "success"}
        # Every instance of each task ran exactly once (one try each).
        assert {p.name: p.read_text() for p in marks.iterdir()} == {
            f"{name}.{i}": "1\n" for name in ("first", "second") for i in range(N)
        }
    finally:
        doomed.stop()
        if survivor is not None:
            survivor.stop()
