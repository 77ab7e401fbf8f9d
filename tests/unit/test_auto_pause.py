"""A DAG is paused once its last N runs failed (Airflow's max_consecutive_failed_dag_runs),
on SQLite and PostgreSQL, with the scheduling loop and the fake executor."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch.authoring import _defaults
from ketch.config import get_settings
from ketch.db.models import DagModel
from ketch.scheduler.loop import Scheduler
from tests.support.fake_executor import (
    FakeExecutor,
    Outcome,
    drive,
    insert_dag,
    run_state,
    serialized_dag,
    trigger,
)

FINISHED = {"success", "failed"}
TASKS = {"a": {}, "b": {"upstream": ["a"]}}


def finish_one_run(engine: Engine, outcome: Outcome, minutes: int) -> str:
    """Trigger a run (``minutes`` after a fixed start, so the order is known) and drive a
    fresh scheduler until it ends; returns its state."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    run_id = trigger(engine, "d", logical_date=start + timedelta(minutes=minutes))
    scheduler = Scheduler(
        get_settings(),
        engine,
        FakeExecutor(engine, {"a": outcome}),
        token_signer=lambda k, i: "token",
    )
    scheduler.start_executor()
    drive(scheduler, lambda: run_state(engine, run_id) in FINISHED)
    scheduler.executor.stop()
    return run_state(engine, run_id)


def is_paused(engine: Engine) -> bool:
    with Session(engine) as session:
        dag = session.get(DagModel, "d")
        assert dag is not None
        return dag.is_paused


def test_paused_after_n_failed_runs_in_a_row(engine: Engine) -> None:
    insert_dag(engine, serialized_dag("d", TASKS, max_consecutive_failed_dag_runs=2))
    assert finish_one_run(engine, Outcome.fail(), 0) == "failed"
    assert not is_paused(engine), "one failed run of two allowed"
    assert finish_one_run(engine, Outcome.success(), 1) == "success"
    assert finish_one_run(engine, Outcome.fail(), 2) == "failed"
    assert not is_paused(engine), "a success in between starts the count again"
    assert finish_one_run(engine, Outcome.fail(), 3) == "failed"
    assert is_paused(engine)


def test_zero_never_pauses(sqlite_engine: Engine) -> None:
    insert_dag(sqlite_engine, serialized_dag("d", TASKS, max_consecutive_failed_dag_runs=0))
    for minute in range(3):
        assert finish_one_run(sqlite_engine, Outcome.fail(), minute) == "failed"
    assert not is_paused(sqlite_engine)


def test_a_successful_run_does_not_pause(sqlite_engine: Engine) -> None:
    insert_dag(sqlite_engine, serialized_dag("d", TASKS, max_consecutive_failed_dag_runs=1))
    assert finish_one_run(sqlite_engine, Outcome.success(), 0) == "success"
    assert not is_paused(sqlite_engine)
    assert finish_one_run(sqlite_engine, Outcome.fail(), 1) == "failed"
    assert is_paused(sqlite_engine)


def _dag_with(monkeypatch: pytest.MonkeyPatch, per_dag_setting: int, **kw: Any) -> int:
    from ketch import DAG

    monkeypatch.setenv(
        _defaults.PARSE_DEFAULTS_ENV,
        json.dumps({"max_consecutive_failed_dag_runs_per_dag": per_dag_setting}),
    )
    with DAG("d", **kw) as dag:
        pass
    return dag.max_consecutive_failed_dag_runs


def test_unset_takes_the_setting_and_an_explicit_zero_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _dag_with(monkeypatch, 4) == 4
    assert _dag_with(monkeypatch, 4, max_consecutive_failed_dag_runs=0) == 0
    assert _dag_with(monkeypatch, 4, max_consecutive_failed_dag_runs=2) == 2
    assert _dag_with(monkeypatch, 0) == 0
