"""``depends_on_past`` / ``wait_for_downstream`` (Airflow's PrevDagrunDep) through the real
scheduling loop with scripted tries, on SQLite and PostgreSQL.

A task with ``depends_on_past`` waits (keeps no state) while the same task did not succeed
or skip in the previous run by logical date; the first run, and a run without a logical
date, do not wait; a task the previous run did not have waits only if it ran before.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch import DAG, EmptyTask
from ketch.authoring.serialize import serialize_dag
from ketch.db.models import DagRun
from ketch.operations.task_instances import set_task_instance_state
from ketch.scheduler.loop import Scheduler
from tests.support.fake_executor import (
    Outcome,
    drive,
    insert_dag,
    run_state,
    serialized_dag,
    ti_states,
    trigger,
)
from tests.unit.test_scheduler import make_scheduler

D1 = datetime(2026, 1, 1, tzinfo=UTC)
D2 = D1 + timedelta(days=1)
D3 = D2 + timedelta(days=1)
FINISHED = {"success", "failed"}


def settle(engine: Engine, scheduler: Scheduler, run: int) -> None:
    """Run the loop until ``run`` has started and a pass finds nothing to do (no try is
    in flight then in these tests)."""
    drive(scheduler, lambda: run_state(engine, run) != "queued")
    for _ in range(200):
        if not scheduler.run_once():
            return
    raise AssertionError("the scheduler never settled")


def finish(engine: Engine, scheduler: Scheduler, run: int) -> str:
    drive(scheduler, lambda: run_state(engine, run) in FINISHED)
    return run_state(engine, run)


def run_id_of(engine: Engine, run: int) -> str:
    with Session(engine) as session:
        row = session.get(DagRun, run)
        assert row is not None
        return row.run_id


def mark_success(engine: Engine, run: int, task_id: str) -> None:
    with Session(engine) as session:
        set_task_instance_state(session, "d", run_id_of(engine, run), task_id, "success")
        session.commit()


DEPENDS = {"a": {"depends_on_past": True}, "b": {"upstream": ["a"]}}


def test_waits_for_the_previous_run_and_runs_once_it_succeeded(engine: Engine) -> None:
    insert_dag(engine, serialized_dag("d", DEPENDS))
    scheduler = make_scheduler(engine, {"a": [Outcome.fail(), Outcome.success()]})
    first = trigger(engine, "d", logical_date=D1)
    assert finish(engine, scheduler, first) == "failed"  # the first run does not wait
    second = trigger(engine, "d", logical_date=D2)
    settle(engine, scheduler, second)
    assert ti_states(engine, second) == {"a": None, "b": None}
    assert run_state(engine, second) == "running"
    mark_success(engine, first, "a")  # a user action on the previous run wakes this one
    assert finish(engine, scheduler, second) == "success"
    assert ti_states(engine, second) == {"a": "success", "b": "success"}


def test_waits_while_the_previous_try_is_unfinished_and_runs_when_it_ends(
    engine: Engine,
) -> None:
    insert_dag(engine, serialized_dag("d", DEPENDS))
    scheduler = make_scheduler(engine, {"a": Outcome.success(delay=0.3)})
    first = trigger(engine, "d", logical_date=D1)
    second = trigger(engine, "d", logical_date=D2)
    assert finish(engine, scheduler, second) == "success"
    launched = [(k.run_id, k.task_id) for k in scheduler.executor.launched]  # type: ignore[attr-defined]
    first_id, second_id = run_id_of(engine, first), run_id_of(engine, second)
    # a of the second run started only after a of the first had succeeded
    assert launched.index((second_id, "a")) > launched.index((first_id, "a"))
    assert run_state(engine, first) == "success"


def test_a_skipped_previous_instance_lets_it_run(engine: Engine) -> None:
    insert_dag(engine, serialized_dag("d", DEPENDS))
    scheduler = make_scheduler(engine, {"a": [Outcome.skip(), Outcome.success()]})
    first = trigger(engine, "d", logical_date=D1)
    assert finish(engine, scheduler, first) == "success"
    second = trigger(engine, "d", logical_date=D2)
    assert finish(engine, scheduler, second) == "success"
    assert ti_states(engine, second)["a"] == "success"


def test_a_run_without_logical_date_has_no_previous_run(engine: Engine) -> None:
    insert_dag(engine, serialized_dag("d", DEPENDS))
    scheduler = make_scheduler(engine, {"a": [Outcome.fail(), Outcome.success()]})
    assert finish(engine, scheduler, trigger(engine, "d", logical_date=D1)) == "failed"
    manual = trigger(engine, "d")  # Airflow 3: a manual run may have no logical date
    assert finish(engine, scheduler, manual) == "success"


def test_trigger_rules_still_decide_a_blocked_task(engine: Engine) -> None:
    tasks = {"up": {}, "a": {"upstream": ["up"], "depends_on_past": True}}
    insert_dag(engine, serialized_dag("d", tasks))
    scheduler = make_scheduler(engine, {"up": Outcome.fail()})
    first = trigger(engine, "d", logical_date=D1)
    assert finish(engine, scheduler, first) == "failed"
    assert ti_states(engine, first)["a"] == "upstream_failed"  # so a is blocked in the next
    second = trigger(engine, "d", logical_date=D2)
    assert finish(engine, scheduler, second) == "failed"
    assert ti_states(engine, second) == {"up": "failed", "a": "upstream_failed"}


def test_wait_for_downstream_waits_for_the_previous_direct_downstream(engine: Engine) -> None:
    tasks = {"a": {"wait_for_downstream": True, "depends_on_past": True}, "b": {"upstream": ["a"]}}
    insert_dag(engine, serialized_dag("d", tasks))
    scheduler = make_scheduler(engine, {"b": [Outcome.fail(), Outcome.success()]})
    first = trigger(engine, "d", logical_date=D1)
    assert finish(engine, scheduler, first) == "failed"
    assert ti_states(engine, first) == {"a": "success", "b": "failed"}
    second = trigger(engine, "d", logical_date=D2)
    settle(engine, scheduler, second)
    assert ti_states(engine, second) == {"a": None, "b": None}
    mark_success(engine, first, "b")
    assert finish(engine, scheduler, second) == "success"


def _task_added_later(engine: Engine, **a: Any) -> tuple[Scheduler, int]:
    insert_dag(engine, serialized_dag("d", {"b": {}}))
    scheduler = make_scheduler(engine, {"a": Outcome.fail()})
    assert finish(engine, scheduler, trigger(engine, "d", logical_date=D1)) == "success"
    insert_dag(engine, serialized_dag("d", {"a": {"depends_on_past": True, **a}, "b": {}}))
    return scheduler, trigger(engine, "d", logical_date=D2)


def test_a_task_the_previous_run_lacked_runs_the_first_time(engine: Engine) -> None:
    scheduler, second = _task_added_later(engine)
    assert finish(engine, scheduler, second) == "failed"  # a ran (and failed, scripted)
    third = trigger(engine, "d", logical_date=D3)
    drive(scheduler, lambda: ti_states(engine, third)["b"] == "success")
    settle(engine, scheduler, third)
    assert ti_states(engine, third)["a"] is None  # now it waits for the failed one


def test_ignore_first_depends_on_past_false_waits_for_a_missing_instance(engine: Engine) -> None:
    scheduler, second = _task_added_later(engine, ignore_first_depends_on_past=False)
    drive(scheduler, lambda: ti_states(engine, second)["b"] == "success")  # b's try in flight
    settle(engine, scheduler, second)
    assert ti_states(engine, second) == {"a": None, "b": "success"}


def test_authoring_default_args_and_wait_for_downstream(tmp_path: Any) -> None:
    with DAG(
        "auth",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        default_args={"depends_on_past": True},
    ) as d:
        EmptyTask(task_id="inherits")
        EmptyTask(task_id="off", depends_on_past=False)
        EmptyTask(task_id="implied", depends_on_past=False, wait_for_downstream=True)
    tasks = serialize_dag(d, tmp_path).tasks
    assert {t: (s.depends_on_past, s.wait_for_downstream) for t, s in tasks.items()} == {
        "inherits": (True, False),
        "off": (False, False),
        "implied": (True, True),  # Airflow: wait_for_downstream implies depends_on_past
    }
    assert all(s.ignore_first_depends_on_past for s in tasks.values())


def _statements_of_full_evaluation(engine: Engine, n_tasks: int) -> int:
    """How many SQL statements one full evaluation of the second run issues when ``n_tasks``
    depends_on_past tasks read the first run."""
    from sqlalchemy import event

    from ketch.config import get_settings
    from ketch.scheduler.context import SchedulerContext
    from ketch.scheduler.reactions import evaluate_run_fully
    from tests.support.fake_executor import FakeExecutor

    dag_id = f"wide{n_tasks}"
    tasks = {f"t{i}": {"depends_on_past": True} for i in range(n_tasks)}
    insert_dag(engine, serialized_dag(dag_id, tasks))
    first = trigger(engine, dag_id, logical_date=D1)
    second = trigger(engine, dag_id, logical_date=D2)
    with Session(engine) as session:
        for run_pk in (first, second):
            run = session.get(DagRun, run_pk)
            assert run is not None
            run.state = "running"
        session.commit()
    ctx = SchedulerContext(
        settings=get_settings(),
        engine=engine,
        executor=FakeExecutor(engine),
        sign_token=lambda k, i: "token",
    )
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    with ctx.sessions() as session:
        run = session.get(DagRun, second)
        assert run is not None
        ctx.dags.get(session, run.dag_hash)  # parsed once per process, not per pass
        event.listen(engine, "before_cursor_execute", count)
        try:
            evaluate_run_fully(ctx, session, run)
            session.flush()
        finally:
            event.remove(engine, "before_cursor_execute", count)
        decided = ti_states_in(session, second)
        session.rollback()
    assert set(decided.values()) == {None}  # every task waits: the first run is unfinished
    return len(statements)


def ti_states_in(session: Session, run_pk: int) -> dict[str, str | None]:
    from sqlalchemy import select

    from ketch.db.models import TaskInstance

    rows = session.execute(
        select(TaskInstance.task_id, TaskInstance.state).where(TaskInstance.dag_run_id == run_pk)
    ).all()
    return {task_id: state for task_id, state in rows}


def test_one_query_per_evaluation_pass_whatever_the_number_of_tasks(engine: Engine) -> None:
    few, many = (
        _statements_of_full_evaluation(engine, 2),
        _statements_of_full_evaluation(engine, 60),
    )
    # the run's states and branch choices, the previous run's states: nothing per task
    assert few == many <= 3
