"""Run creation: manual runs, scheduled runs from timetables, catchup, max_active_runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from ketch.db.models import DagModel, DagRun, DagVersion, TaskInstance
from ketch.scheduler.runs import (
    DagRunAlreadyExists,
    create_dag_run,
    create_due_runs,
    update_next_dagrun,
)
from ketch.states import DagRunType
from tests.support.fake_executor import insert_dag, serialized_dag

DAILY = {"kind": "cron_interval", "expression": "0 0 * * *"}
NOW = datetime(2024, 1, 4, 1, 0, tzinfo=UTC)


def d(day: int) -> datetime:
    return datetime(2024, 1, day, tzinfo=UTC)


def _dag(engine: Engine, paused: bool = False, **fields: Any) -> None:
    tasks = {"a": {"retries": 2, "priority_weight": 5, "pool_slots": 2}, "b": {"upstream": ["a"]}}
    insert_dag(engine, serialized_dag("d", tasks, **fields), paused=paused)


def _create_all_due(engine: Engine, now: datetime = NOW) -> list[tuple[Any, ...]]:
    with Session(engine) as session:
        for dag in session.scalars(select(DagModel).where(DagModel.needs_next_dagrun)):
            update_next_dagrun(session, dag, now)
        while create_due_runs(session, now, limit=2):
            pass
        session.commit()
        rows = session.execute(
            select(
                DagRun.run_id,
                DagRun.logical_date,
                DagRun.data_interval_start,
                DagRun.data_interval_end,
            ).order_by(DagRun.logical_date)
        )
        return [tuple(r) for r in rows]


def test_create_dag_run_inserts_all_task_instances(engine: Engine) -> None:
    _dag(engine)
    with Session(engine) as session:
        dag = session.get(DagModel, "d")
        assert dag is not None
        run = create_dag_run(
            session,
            dag,
            run_type=DagRunType.MANUAL,
            run_id=None,
            logical_date=None,
            data_interval=None,
            run_after=d(2),
            conf={"x": 1},
            params={"p": 2},
        )
        session.commit()
        assert run.run_id == "manual__2024-01-02T00:00:00+00:00"
        assert (run.state, run.needs_evaluation, run.dag_hash) == (
            "queued",
            True,
            dag.serialized_hash,
        )
        tis = {ti.task_id: ti for ti in session.scalars(select(TaskInstance))}
        assert set(tis) == {"a", "b"}
        a = tis["a"]
        assert (a.state, a.max_tries, a.priority_weight, a.pool_slots, a.try_number) == (
            None,
            2,
            5,
            2,
            0,
        )
        assert session.get(DagVersion, dag.serialized_hash) is not None
        with pytest.raises(DagRunAlreadyExists, match="same run_id"):
            create_dag_run(
                session,
                dag,
                run_type=DagRunType.MANUAL,
                run_id=run.run_id,
                logical_date=None,
                data_interval=None,
                run_after=d(3),
                conf={},
                params={},
            )


def test_one_scheduled_run_per_logical_date(sqlite_engine: Engine) -> None:
    _dag(sqlite_engine)
    with Session(sqlite_engine) as session:
        dag = session.get(DagModel, "d")
        assert dag is not None
        kwargs: dict[str, Any] = dict(
            run_type=DagRunType.SCHEDULED,
            logical_date=d(1),
            data_interval=None,
            run_after=d(2),
            conf={},
            params={},
        )
        run = create_dag_run(session, dag, run_id=None, **kwargs)
        assert run.run_id == "scheduled__2024-01-01T00:00:00+00:00"
        with pytest.raises(DagRunAlreadyExists, match="same logical date"):
            create_dag_run(session, dag, run_id="other", **kwargs)


def test_catchup_creates_every_missed_interval(sqlite_engine: Engine) -> None:
    _dag(sqlite_engine, schedule=DAILY, start_date=d(1).isoformat(), catchup=True)
    runs = _create_all_due(sqlite_engine)
    assert runs == [
        ("scheduled__2024-01-01T00:00:00+00:00", d(1), d(1), d(2)),
        ("scheduled__2024-01-02T00:00:00+00:00", d(2), d(2), d(3)),
        ("scheduled__2024-01-03T00:00:00+00:00", d(3), d(3), d(4)),
    ]
    with Session(sqlite_engine) as session:
        dag = session.get(DagModel, "d")
        assert dag is not None
        assert (dag.next_dagrun, dag.next_dagrun_create_after) == (d(4), d(5))
        assert dag.needs_next_dagrun is False


def test_no_catchup_creates_only_the_latest_interval(sqlite_engine: Engine) -> None:
    _dag(sqlite_engine, schedule=DAILY, start_date=d(1).isoformat(), catchup=False)
    runs = _create_all_due(sqlite_engine)
    assert [r[1:] for r in runs] == [(d(3), d(3), d(4))]


def test_end_date_stops_run_creation(sqlite_engine: Engine) -> None:
    _dag(
        sqlite_engine,
        schedule=DAILY,
        start_date=d(1).isoformat(),
        end_date=d(2).isoformat(),
        catchup=True,
    )
    runs = _create_all_due(sqlite_engine)
    assert [r[1] for r in runs] == [d(1), d(2)]


def test_max_active_runs_limits_scheduled_run_creation(sqlite_engine: Engine) -> None:
    _dag(
        sqlite_engine,
        schedule=DAILY,
        start_date=d(1).isoformat(),
        catchup=True,
        max_active_runs=1,
    )
    runs = _create_all_due(sqlite_engine)
    assert [r[1] for r in runs] == [d(1)]
    with Session(sqlite_engine) as session:
        dag = session.get(DagModel, "d")
        assert dag is not None
        assert dag.next_dagrun == d(2) and dag.next_dagrun_create_after is None


def test_paused_dag_gets_no_scheduled_runs(sqlite_engine: Engine) -> None:
    _dag(sqlite_engine, paused=True, schedule=DAILY, start_date=d(1).isoformat(), catchup=True)
    assert _create_all_due(sqlite_engine) == []
    with Session(sqlite_engine) as session:
        assert session.scalar(select(func.count(DagRun.id))) == 0
