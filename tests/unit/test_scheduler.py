"""The scheduling loop end to end with the fake executor: trigger rules, branching, retries,
limits, completion. The trigger-rule and completion tests run on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.config import get_settings
from ketch.db.models import DagRun, TaskInstance
from ketch.scheduler.loop import Scheduler
from ketch.states import DagRunState
from tests.support.fake_executor import (
    FakeExecutor,
    Outcome,
    drive,
    insert_dag,
    run_state,
    serialized_dag,
    ti_states,
    trigger,
    try_rows,
)

FINISHED = {"success", "failed"}


def make_scheduler(engine: Engine, scripts: dict[str, Any], **kw: Any) -> Scheduler:
    executor = FakeExecutor(engine, scripts, **kw)
    scheduler = Scheduler(get_settings(), engine, executor, token_signer=lambda k, i: "token")
    scheduler.start_executor()
    return scheduler


def run_dag(
    engine: Engine, tasks: dict[str, Any], scripts: dict[str, Any], **dag: Any
) -> tuple[dict[str, str | None], str, Scheduler]:
    insert_dag(engine, serialized_dag("d", tasks, **dag))
    run_id = trigger(engine, "d")
    scheduler = make_scheduler(engine, scripts)
    drive(scheduler, lambda: run_state(engine, run_id) in FINISHED)
    return ti_states(engine, run_id), run_state(engine, run_id), scheduler


def test_linear_success(engine: Engine) -> None:
    tasks = {"a": {}, "b": {"upstream": ["a"]}, "c": {"upstream": ["b"]}}
    states, run, scheduler = run_dag(engine, tasks, {})
    assert states == {"a": "success", "b": "success", "c": "success"}
    assert run == "success"
    launched = [k.task_id for k in scheduler.executor.launched]  # type: ignore[attr-defined]
    assert launched == ["a", "b", "c"]


def test_failure_propagates_upstream_failed_and_fails_run(engine: Engine) -> None:
    tasks = {"a": {}, "b": {"upstream": ["a"]}, "c": {"upstream": ["b"]}}
    states, run, _ = run_dag(engine, tasks, {"a": Outcome.fail()})
    assert states == {"a": "failed", "b": "upstream_failed", "c": "upstream_failed"}
    assert run == "failed"


@pytest.mark.parametrize(
    ("rule", "upstream_outcomes", "expected"),
    [
        ("all_success", ["success", "skipped"], "skipped"),
        ("all_failed", ["failed", "failed"], "success"),
        ("all_failed", ["failed", "success"], "skipped"),
        ("all_done", ["failed", "skipped"], "success"),
        ("one_success", ["failed", "success"], "success"),
        ("one_success", ["failed", "failed"], "upstream_failed"),
        ("one_failed", ["success", "failed"], "success"),
        ("one_failed", ["success", "success"], "skipped"),
        ("none_failed", ["success", "skipped"], "success"),
        ("none_failed", ["success", "failed"], "upstream_failed"),
        ("none_skipped", ["failed", "success"], "success"),
        ("none_skipped", ["skipped", "success"], "skipped"),
        ("none_failed_min_one_success", ["skipped", "skipped"], "skipped"),
        ("none_failed_min_one_success", ["success", "skipped"], "success"),
        ("always", ["failed", "failed"], "success"),
    ],
)
def test_trigger_rules_end_to_end(
    sqlite_engine: Engine, rule: str, upstream_outcomes: list[str], expected: str
) -> None:
    outcome = {"success": Outcome.success(), "failed": Outcome.fail(), "skipped": Outcome.skip()}
    tasks = {"u1": {}, "u2": {}, "x": {"upstream": ["u1", "u2"], "trigger_rule": rule}}
    scripts = {"u1": outcome[upstream_outcomes[0]], "u2": outcome[upstream_outcomes[1]]}
    states, _, _ = run_dag(sqlite_engine, tasks, scripts)
    assert states["x"] == expected


def test_trigger_rule_join_on_both_backends(engine: Engine) -> None:
    tasks = {
        "ok": {},
        "bad": {},
        "cleanup": {"upstream": ["ok", "bad"], "trigger_rule": "all_done"},
        "alert": {"upstream": ["ok", "bad"], "trigger_rule": "one_failed"},
        "report": {"upstream": ["ok", "bad"]},
    }
    states, run, _ = run_dag(engine, tasks, {"bad": Outcome.fail()})
    assert states == {
        "ok": "success",
        "bad": "failed",
        "cleanup": "success",
        "alert": "success",
        "report": "upstream_failed",
    }
    assert run == "failed"  # a leaf (report) is upstream_failed


def test_run_succeeds_when_failure_is_handled_by_leaves(engine: Engine) -> None:
    tasks = {"bad": {}, "handler": {"upstream": ["bad"], "trigger_rule": "all_failed"}}
    states, run, _ = run_dag(engine, tasks, {"bad": Outcome.fail()})
    assert states == {"bad": "failed", "handler": "success"}
    assert run == "success"  # only leaves decide


def test_skip_propagates_downstream(sqlite_engine: Engine) -> None:
    tasks = {"a": {}, "b": {"upstream": ["a"]}, "c": {"upstream": ["b"]}}
    states, run, _ = run_dag(sqlite_engine, tasks, {"a": Outcome.skip()})
    assert states == {"a": "skipped", "b": "skipped", "c": "skipped"}
    assert run == "success"


def test_branching_skips_unfollowed_and_keeps_join(engine: Engine) -> None:
    tasks = {
        "branch": {"kind": "branch"},
        "a": {"upstream": ["branch"]},
        "b": {"upstream": ["branch"]},
        "b2": {"upstream": ["b"]},
        "join": {"upstream": ["a", "b2", "branch"], "trigger_rule": "none_failed_min_one_success"},
    }
    states, run, _ = run_dag(engine, tasks, {"branch": Outcome.branch(["a"])})
    assert states == {
        "branch": "success",
        "a": "success",
        "b": "skipped",
        "b2": "skipped",
        "join": "success",
    }
    assert run == "success"


def test_retries_then_success_with_delay(sqlite_engine: Engine) -> None:
    tasks = {"a": {"retries": 2, "retry_delay": 0.0}}
    scripts = {"a": [Outcome.fail(), Outcome.exit_without_report(3), Outcome.success()]}
    states, run, _ = run_dag(sqlite_engine, tasks, scripts)
    assert states == {"a": "success"} and run == "success"
    with Session(sqlite_engine) as session:
        ti = session.scalars(select(TaskInstance)).one()
        assert ti.try_number == 3
    rows = try_rows(sqlite_engine, ti.id)
    assert [r.state for r in rows] == ["failed", "failed", "success"]
    assert rows[1].error == "exited with code 3 without reporting a result"


def test_fail_without_retry_ignores_retries(sqlite_engine: Engine) -> None:
    tasks = {"a": {"retries": 3, "retry_delay": 0.0}}
    states, _, _ = run_dag(sqlite_engine, tasks, {"a": Outcome.fail(retry=False)})
    assert states == {"a": "failed"}


def test_vanished_try_is_failed_with_reason(sqlite_engine: Engine) -> None:
    states, _, _ = run_dag(sqlite_engine, {"a": {}}, {"a": Outcome.vanish()})
    assert states == {"a": "failed"}
    with Session(sqlite_engine) as session:
        ti = session.scalars(select(TaskInstance)).one()
        assert ti.error == "ended without reporting a result (exit code unknown)"


def test_launch_error_fails_the_try(sqlite_engine: Engine) -> None:
    states, _, _ = run_dag(sqlite_engine, {"a": {}}, {"a": Outcome.launch_error()})
    assert states == {"a": "failed"}
    with Session(sqlite_engine) as session:
        ti = session.scalars(select(TaskInstance)).one()
        assert ti.error == "launch failed: no capacity (scripted)"


def test_unknown_pool_fails_with_clear_error(sqlite_engine: Engine) -> None:
    states, run, _ = run_dag(sqlite_engine, {"a": {"pool": "nope"}}, {})
    assert states == {"a": "failed"} and run == "failed"
    with Session(sqlite_engine) as session:
        assert session.scalars(select(TaskInstance.error)).one() == "pool 'nope' does not exist"


def _fan_out(n: int, **task: Any) -> dict[str, dict[str, Any]]:
    return {f"t{i}": dict(task) for i in range(n)}


def test_parallelism_limit(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__CORE__PARALLELISM", "3")
    get_settings.cache_clear()
    scripts = {f"t{i}": Outcome.success(delay=0.03) for i in range(10)}
    states, run, scheduler = run_dag(sqlite_engine, _fan_out(10), scripts)
    assert run == "success" and set(states.values()) == {"success"}
    assert scheduler.executor.max_concurrent == 3  # type: ignore[attr-defined]


def test_max_active_tasks_is_per_run(sqlite_engine: Engine) -> None:
    scripts = {f"t{i}": Outcome.success(delay=0.03) for i in range(8)}
    insert_dag(sqlite_engine, serialized_dag("d", _fan_out(8), max_active_tasks=2))
    runs = [trigger(sqlite_engine, "d", "r1"), trigger(sqlite_engine, "d", "r2")]
    scheduler = make_scheduler(sqlite_engine, scripts)
    drive(scheduler, lambda: all(run_state(sqlite_engine, r) == "success" for r in runs))
    executor: FakeExecutor = scheduler.executor  # type: ignore[assignment]
    assert executor.max_concurrent_by_run == {"r1": 2, "r2": 2}
    assert executor.max_concurrent == 4  # Airflow 3: the limit is per DAG run


def test_pool_slots_limit(sqlite_engine: Engine) -> None:
    from ketch.db.models import Pool

    with Session(sqlite_engine) as session:
        session.add(Pool(pool="small", slots=3))
        session.commit()
    scripts = {f"t{i}": Outcome.success(delay=0.03) for i in range(6)}
    _, run, scheduler = run_dag(sqlite_engine, _fan_out(6, pool="small", pool_slots=2), scripts)
    assert run == "success"
    assert scheduler.executor.max_concurrent == 1  # type: ignore[attr-defined]


def test_max_active_runs_keeps_runs_queued(sqlite_engine: Engine) -> None:
    insert_dag(sqlite_engine, serialized_dag("d", {"a": {}}, max_active_runs=1))
    runs = [trigger(sqlite_engine, "d", f"r{i}") for i in range(3)]
    scheduler = make_scheduler(sqlite_engine, {"a": Outcome.success(delay=0.02)})
    seen_running: list[int] = []

    def done() -> bool:
        states = [run_state(sqlite_engine, r) for r in runs]
        seen_running.append(states.count("running"))
        return all(s == "success" for s in states)

    drive(scheduler, done)
    assert max(seen_running) == 1
    with Session(sqlite_engine) as session:
        starts = session.scalars(select(DagRun.start_date).order_by(DagRun.id)).all()
        assert starts == sorted(s for s in starts if s is not None)  # oldest first


def test_paused_dag_does_not_queue_tasks(sqlite_engine: Engine) -> None:
    insert_dag(sqlite_engine, serialized_dag("d", {"a": {}}), paused=True)
    run_id = trigger(sqlite_engine, "d")
    scheduler = make_scheduler(sqlite_engine, {})
    for _ in range(3):
        scheduler.run_once()
    assert run_state(sqlite_engine, run_id) == DagRunState.QUEUED.value
    assert scheduler.executor.launched == []  # type: ignore[attr-defined]


def test_join_of_many_upstreams(sqlite_engine: Engine) -> None:
    tasks = _fan_out(300)
    tasks["join"] = {"upstream": [f"t{i}" for i in range(300)]}
    states, run, _ = run_dag(sqlite_engine, tasks, {})
    assert run == "success" and states["join"] == "success"
