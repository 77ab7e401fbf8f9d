"""Airflow's task concurrency knobs: ``max_active_tis_per_dag`` and ``max_active_tis_per_dagrun``.

The scheduler counts a task's queued + running tries across every run of its DAG / within
one run; a try over the limit stays ``scheduled`` (never failed) until a slot frees.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session

from ketch import DAG, EmptyTask, task
from ketch.authoring.serialize import serialize_dag
from ketch.db.models import TaskInstance
from ketch.exceptions import DagDefinitionError
from ketch.executors.base import LaunchRequest
from ketch.scheduler.queueing import queue_and_launch
from tests.support.fake_executor import (
    FakeExecutor,
    Outcome,
    drive,
    insert_dag,
    run_state,
    serialized_dag,
    ti_states,
    trigger,
)
from tests.support.ketch_process import standalone_with_dag
from tests.unit.test_scheduler import make_scheduler

START = datetime(2026, 1, 1)


# ----- authoring ---------------------------------------------------------------------------


def test_arguments_are_accepted_from_default_args_and_serialized(tmp_path: Path) -> None:
    with DAG(
        "knobs",
        schedule=None,
        start_date=START,
        default_args={"max_active_tis_per_dag": 3},
    ) as d:

        @task(max_active_tis_per_dagrun=2)
        def work() -> None: ...

        work()
        EmptyTask(task_id="own", max_active_tis_per_dag=None)
    tasks = serialize_dag(d, tmp_path).tasks
    assert (tasks["work"].max_active_tis_per_dag, tasks["work"].max_active_tis_per_dagrun) == (3, 2)
    assert (tasks["own"].max_active_tis_per_dag, tasks["own"].max_active_tis_per_dagrun) == (
        None,
        None,
    )


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_invalid_limits_are_definition_errors(bad: Any) -> None:
    with (
        DAG("bad", schedule=None, start_date=START),
        pytest.raises(DagDefinitionError, match="max_active_tis_per_dag must be an integer"),
    ):
        EmptyTask(task_id="t", max_active_tis_per_dag=bad)


# ----- the scheduler (scripted outcomes) ---------------------------------------------------


class CountingExecutor(FakeExecutor):
    """Also records the most tries of each task running at once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.max_by_task: dict[str, int] = {}

    def launch(self, request: LaunchRequest) -> str:
        result = super().launch(request)
        with self._lock:
            task_id = request.key.task_id
            n = sum(1 for key in self._running if key.task_id == task_id)
            self.max_by_task[task_id] = max(self.max_by_task.get(task_id, 0), n)
        return result


def scheduler_with(engine: Engine, scripts: dict[str, Any]) -> Any:
    from ketch.config import get_settings
    from ketch.scheduler.loop import Scheduler

    executor = CountingExecutor(engine, scripts)
    scheduler = Scheduler(get_settings(), engine, executor, token_signer=lambda k, i: "token")
    scheduler.start_executor()
    return scheduler


def test_max_active_tis_per_dag_counts_across_runs(engine: Engine) -> None:
    tasks = {"limited": {"max_active_tis_per_dag": 2}, "free": {}}
    insert_dag(engine, serialized_dag("d", tasks))
    runs = [trigger(engine, "d", f"r{i}") for i in range(5)]
    scripts = {"limited": Outcome.success(delay=0.05), "free": Outcome.success(delay=0.05)}
    scheduler = scheduler_with(engine, scripts)
    drive(scheduler, lambda: all(run_state(engine, r) == "success" for r in runs))
    executor: CountingExecutor = scheduler.executor
    assert executor.max_by_task["limited"] == 2
    assert executor.max_by_task["free"] == 5  # no limit: one per run, all at once


def test_tries_over_the_limit_stay_scheduled(sqlite_engine: Engine) -> None:
    tasks = {"limited": {"max_active_tis_per_dag": 1}, "after": {"upstream": ["limited"]}}
    insert_dag(sqlite_engine, serialized_dag("d", tasks))
    runs = [trigger(sqlite_engine, "d", f"r{i}") for i in range(3)]
    scheduler = make_scheduler(sqlite_engine, {"limited": Outcome.hang()})
    try:
        for _ in range(5):
            scheduler.run_once()
        states = Counter(ti_states(sqlite_engine, r)["limited"] for r in runs)
        assert states["scheduled"] == 2
        assert states["queued"] + states["running"] == 1
        assert len(scheduler.executor.launched) == 1  # type: ignore[attr-defined]
    finally:
        scheduler.executor.stop()


def test_a_zero_limit_keeps_the_task_scheduled_and_others_run(sqlite_engine: Engine) -> None:
    # Airflow compares with ``is not None``: 0 is a limit no try ever fits.
    tasks = {"never": {"max_active_tis_per_dagrun": 0}, "other": {}}
    insert_dag(sqlite_engine, serialized_dag("d", tasks))
    run = trigger(sqlite_engine, "d")
    scheduler = make_scheduler(sqlite_engine, {})
    drive(scheduler, lambda: ti_states(sqlite_engine, run)["other"] == "success")
    for _ in range(3):
        scheduler.run_once()
    assert ti_states(sqlite_engine, run) == {"never": "scheduled", "other": "success"}
    assert run_state(sqlite_engine, run) == "running"


def test_per_dagrun_limit_of_one_does_not_hold_back_other_runs(sqlite_engine: Engine) -> None:
    tasks = {"t": {"max_active_tis_per_dagrun": 1}}
    insert_dag(sqlite_engine, serialized_dag("d", tasks))
    runs = [trigger(sqlite_engine, "d", f"r{i}") for i in range(3)]
    scheduler = scheduler_with(sqlite_engine, {"t": Outcome.success(delay=0.05)})
    drive(scheduler, lambda: all(run_state(sqlite_engine, r) == "success" for r in runs))
    assert scheduler.executor.max_by_task["t"] == 3  # one per run, every run at once


def test_limits_cost_one_grouped_query_however_many_tasks(sqlite_engine: Engine) -> None:
    tasks = {
        f"t{i}": {"max_active_tis_per_dag": 1, "max_active_tis_per_dagrun": 1} for i in range(30)
    }
    insert_dag(sqlite_engine, serialized_dag("d", tasks))
    for i in range(3):
        trigger(sqlite_engine, "d", f"r{i}")
    scheduler = make_scheduler(sqlite_engine, {f"t{i}": Outcome.hang() for i in range(30)})
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    try:
        scheduler.run_once()  # evaluates the runs and queues what fits
        with Session(sqlite_engine) as session:
            active = session.execute(
                select(TaskInstance.task_id, func.count())
                .where(TaskInstance.state.in_(["queued", "running"]))
                .group_by(TaskInstance.task_id)
            ).all()
        assert len(active) == 30 and {n for _, n in active} == {1}
        event.listen(sqlite_engine, "before_cursor_execute", record)
        with Session(sqlite_engine) as session:
            launched = queue_and_launch(scheduler.ctx, session)
        event.remove(sqlite_engine, "before_cursor_execute", record)
    finally:
        scheduler.executor.stop()
    assert launched == 0  # 60 scheduled tries, every one over its task's limit
    grouped = [s for s in statements if "GROUP BY" in s.upper()]
    assert len(grouped) == 1, grouped
    # Candidates come in pages and starved tasks are excluded from the next page in SQL,
    # not looked up one by one.
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) <= 8, selects


# ----- end to end on the local executor ------------------------------------------------------

LIMITED_DAG = """
import time
from datetime import datetime, timezone

from ketch import DAG, task

with DAG("e2e_limited", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)):
    @task(max_active_tis_per_dag=1)
    def one_at_a_time():
        time.sleep(0.4)

    one_at_a_time()
"""


def test_one_try_at_a_time_across_runs_on_the_local_executor(
    ketch_home: Path, tmp_path: Path
) -> None:
    with standalone_with_dag(ketch_home, tmp_path, "limited.py", LIMITED_DAG, "e2e_limited") as api:
        runs = [api.trigger("e2e_limited")["dag_run_id"] for _ in range(3)]
        finished = [api.wait_run_finished("e2e_limited", r, 120) for r in runs]
        tis = [api.task_instances("e2e_limited", r)["one_at_a_time"] for r in runs]
    assert [f["state"] for f in finished] == ["success"] * 3, tis
    spans = sorted(
        (datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"]))
        for ti in tis
    )
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, spans  # never two tries at once
