"""Crash safety of a mapped task's expansion: ``ketch standalone`` SIGKILLs itself at the
expansion's commit boundary (``expansion.before_commit``: instances written, not committed;
``expansion.after_commit``: committed, nothing done with them yet), is restarted without
the fault, and the run finishes with exactly N instances, each run once."""

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

N = 5

DAG_SOURCE = f"""
import os
from datetime import datetime, timezone

from ketch import dag, get_current_context, task

MARKS = os.environ["E2E_MARKS"]


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     is_paused_upon_creation=False)
def crash_mapped():
    @task
    def items():
        return list(range({N}))

    @task
    def work(i):
        ctx = get_current_context()
        with open(os.path.join(MARKS, f"work.{{ctx['map_index']}}"), "a") as f:
            f.write(f"{{ctx['try_number']}}\\n")
        return i * i

    @task
    def total(values):
        return sum(values)

    total(work.expand(i=items()))


crash_mapped()
"""


def _count(db_url: str, run_id: str) -> dict[int, str | None]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(TaskInstance.map_index, TaskInstance.state).where(
                    TaskInstance.run_id == run_id, TaskInstance.task_id == "work"
                )
            ).all()
    finally:
        engine.dispose()
    return {row.map_index: row.state for row in rows}


@pytest.mark.parametrize("point", ["expansion.before_commit", "expansion.after_commit"])
def test_killed_at_expansion_the_run_completes_with_exactly_n_instances(
    ketch_home: Path, db_url: str, tmp_path: Path, point: str
) -> None:
    dags, marks = tmp_path / "dags", tmp_path / "marks"
    dags.mkdir()
    marks.mkdir()
    (dags / "crash_mapped.py").write_text(DAG_SOURCE)
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
        wait_for(lambda: api.dag("crash_mapped"), 60, 0.1, "crash_mapped parsed")
        run_id = str(api.trigger("crash_mapped")["dag_run_id"])
        deadline = time.monotonic() + 90
        while doomed.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert doomed.proc is not None and doomed.proc.returncode == -signal.SIGKILL
        assert f"fault point {point} reached" in doomed.output()
        if point == "expansion.before_commit":
            # The expansion was lost with its transaction: the placeholder is still there.
            assert _count(db_url, run_id) == {-1: None}
        survivor = KetchProcess(env, "standalone", name="survivor").start()
        wait_for(api.healthy, 60, 0.05, "web server after the restart")
        run = api.wait_run_finished("crash_mapped", run_id, 120)
        assert run["state"] == "success"
        assert _count(db_url, run_id) == dict.fromkeys(range(N), "success")
        # Every instance ran exactly once (one try each).
        assert {p.name: p.read_text() for p in marks.iterdir()} == {
            f"work.{i}": "1\n" for i in range(N)
        }
    finally:
        doomed.stop()
        if survivor is not None:
            survivor.stop()
