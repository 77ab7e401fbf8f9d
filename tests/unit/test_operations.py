"""User actions (ketch.operations) on both backends: trigger, clear, mark, cancel, pause, reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch import operations
from ketch.db.models import DagModel, DagRun, DagVersion, TaskInstance, TaskInstanceTry
from ketch.exceptions import ParamValidationError
from ketch.serialization import SerializedDag, SerializedParam, SerializedSchedule, SerializedTask

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# --- helpers also used by test_rest_api.py and test_cli.py ------------------------------------


def serialized_chain(dag_id: str = "etl", *, retries: int = 2) -> SerializedDag:
    """extract >> transform >> load, plus a side task report after extract; a param ``n``."""
    edges = {"extract": ["transform", "report"], "transform": ["load"], "load": [], "report": []}
    ups: dict[str, list[str]] = {t: [] for t in edges}
    for up, downs in edges.items():
        for d in downs:
            ups[d].append(up)
    tasks = {
        t: SerializedTask(
            task_id=t,
            kind="python",
            upstream_task_ids=ups[t],
            downstream_task_ids=downs,
            retries=retries,
        )
        for t, downs in edges.items()
    }
    return SerializedDag(
        dag_id=dag_id,
        fileloc=f"/dags/{dag_id}.py",
        relative_fileloc=f"{dag_id}.py",
        tags=["team-a"] if dag_id == "etl" else [],
        schedule=SerializedSchedule(kind="none"),
        params={
            "n": SerializedParam(default=3, schema={"type": "integer", "minimum": 1}),
        },
        tasks=tasks,
    )


def add_dag(session: Session, serialized: SerializedDag, *, paused: bool = False) -> DagModel:
    data = serialized.model_dump(mode="json", by_alias=True)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    dag = DagModel(
        dag_id=serialized.dag_id,
        fileloc=serialized.fileloc,
        relative_fileloc=serialized.relative_fileloc,
        is_paused=paused,
        is_active=True,
        serialized=data,
        serialized_hash=digest,
        tags=serialized.tags,
        schedule_summary=serialized.schedule.summary,
        needs_next_dagrun=False,
    )
    session.add(dag)
    session.flush()
    return dag


def add_run(
    session: Session,
    dag: DagModel,
    run_id: str,
    states: dict[str, str | None],
    *,
    run_state: str = "running",
    try_number: int = 1,
) -> DagRun:
    """A run with TIs in the given states (try 1 each, max_tries 0, a try row each)."""
    if session.get(DagVersion, dag.serialized_hash) is None:
        session.add(
            DagVersion(
                dag_hash=dag.serialized_hash,
                dag_id=dag.dag_id,
                serialized=dag.serialized,
                created_at=NOW,
            )
        )
    run = DagRun(
        dag_id=dag.dag_id,
        run_id=run_id,
        run_type="manual",
        state=run_state,
        run_after=NOW,
        start_date=NOW,
        end_date=NOW if run_state in ("success", "failed") else None,
        dag_hash=dag.serialized_hash,
        needs_evaluation=False,
        conf={},
        params={},
    )
    session.add(run)
    session.flush()
    for task_id, state in states.items():
        tries = try_number if state is not None else 0
        ti = TaskInstance(
            dag_run_id=run.id,
            dag_id=dag.dag_id,
            run_id=run_id,
            task_id=task_id,
            state=state,
            try_number=tries,
            max_tries=0,
            start_date=NOW if tries else None,
            end_date=NOW if state in ("success", "failed", "upstream_failed") else None,
            error="boom" if state == "failed" else None,
        )
        session.add(ti)
        session.flush()
        if tries:
            session.add(TaskInstanceTry(task_instance_id=ti.id, try_number=tries, state=state))
    session.flush()
    return run


def ti_states(session: Session, run: DagRun) -> dict[str, str | None]:
    tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_run_id == run.id))
    return {ti.task_id: ti.state for ti in tis}


def ti_of(session: Session, run: DagRun, task_id: str) -> TaskInstance:
    ti = session.scalars(
        select(TaskInstance).where(
            TaskInstance.dag_run_id == run.id, TaskInstance.task_id == task_id
        )
    ).one()
    return ti


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s:
        yield s


@pytest.fixture
def hook_calls() -> Iterator[list[int]]:
    calls: list[int] = []
    hook = lambda: calls.append(1)  # noqa: E731
    operations.on_change.append(hook)
    yield calls
    operations.on_change.remove(hook)


# --- trigger ---------------------------------------------------------------------------------


def test_trigger_creates_queued_run_without_logical_date_and_resolves_params(
    session: Session, hook_calls: list[int]
) -> None:
    add_dag(session, serialized_chain())
    run = operations.trigger_dag(session, "etl", conf={"extra": "x"}, now=NOW)
    assert hook_calls == []  # not before the caller commits
    session.commit()
    assert hook_calls == [1]
    assert run.state == "queued" and run.run_type == "manual"
    assert run.logical_date is None and run.data_interval_start is None
    assert run.run_after == NOW
    assert run.run_id.startswith(f"manual__{NOW.isoformat()}_") and len(run.run_id) > 40
    assert run.params == {"extra": "x", "n": 3}
    assert run.conf == {"extra": "x"}
    assert ti_states(session, run) == dict.fromkeys(["extract", "transform", "load", "report"])
    assert run.needs_evaluation


def test_trigger_with_logical_date_infers_interval_and_refuses_duplicates(
    session: Session,
) -> None:
    add_dag(session, serialized_chain())
    when = datetime(2026, 2, 1, tzinfo=UTC)
    run = operations.trigger_dag(session, "etl", logical_date=when, run_id="r1", now=NOW)
    assert run.run_id == "r1" and run.logical_date == when
    assert run.data_interval_start == when and run.data_interval_end == when
    assert run.run_after == when  # Airflow: run_after = data_interval.end
    with pytest.raises(operations.DagRunAlreadyExists, match="r1"):
        operations.trigger_dag(session, "etl", run_id="r1", now=NOW)
    with pytest.raises(operations.DagRunAlreadyExists, match="logical date"):
        operations.trigger_dag(session, "etl", logical_date=when, now=NOW)
    assert operations.generate_manual_run_id(logical_date=when, run_after=NOW) == (
        f"manual__{NOW.isoformat()}"
    )


def test_trigger_errors_name_the_problem(session: Session) -> None:
    add_dag(session, serialized_chain())
    gone = add_dag(session, serialized_chain("gone"))
    gone.is_active = False
    with pytest.raises(ParamValidationError) as err:
        operations.trigger_dag(session, "etl", conf={"n": 0})
    assert err.value.field == "n"
    with pytest.raises(operations.DagNotFound, match="'nope'"):
        operations.trigger_dag(session, "nope")
    with pytest.raises(operations.DagNotFound, match="'gone'"):
        operations.trigger_dag(session, "gone")
    with pytest.raises(operations.InvalidRequest) as bad:
        operations.trigger_dag(session, "etl", conf=[1, 2])  # type: ignore[arg-type]
    assert bad.value.field == "conf"
    with pytest.raises(operations.InvalidRequest, match="timezone"):
        operations.trigger_dag(session, "etl", logical_date=datetime(2026, 1, 1))


# --- run ids ---------------------------------------------------------------------------------

BAD_RUN_IDS = [
    pytest.param("", "must not be empty", id="empty"),
    pytest.param("../../../x", "'/'", id="dot-dot-slash"),
    pytest.param("a/b", "'/'", id="slash"),
    pytest.param("/abs", "'/'", id="leading-slash"),
    pytest.param("..\\..\\x", "'\\\\'", id="backslash"),
    pytest.param("..", "'..'", id="dot-dot"),
    pytest.param("v1..2", "'..'", id="dot-dot-inside"),
    pytest.param("a\nb", "line breaks", id="newline"),
    pytest.param("a\rb", "line breaks", id="carriage-return"),
    pytest.param("a\x00b", "control characters", id="nul"),
    pytest.param("a\x1bb", "control characters", id="escape"),
    pytest.param("a\u2028b", "line breaks", id="line-separator"),
    pytest.param("a\ud800b", "valid Unicode", id="lone-surrogate"),
    pytest.param(" run", "whitespace", id="leading-space"),
    pytest.param("run\t", "control characters", id="trailing-tab"),
    pytest.param("run ", "whitespace", id="trailing-space"),
    pytest.param("x" * 251, "at most 250 characters", id="too-long"),
    pytest.param("é" * 125, "at most 248 bytes", id="too-many-bytes"),
    pytest.param("x" * 249, "at most 248 bytes", id="file-name-too-long"),
    pytest.param("scheduled__2026-01-01T00:00:00+00:00", "'scheduled__'", id="scheduled"),
    pytest.param("backfill__x", "'backfill__'", id="backfill"),
    pytest.param("asset_triggered__x", "'asset_triggered__'", id="asset"),
    pytest.param("dataset_triggered__x", "'dataset_triggered__'", id="dataset"),
    pytest.param("Scheduled__x", "'scheduled__'", id="scheduled-any-case"),
]


@pytest.fixture
def sqlite_session(sqlite_engine: Engine) -> Iterator[Session]:
    with Session(sqlite_engine, expire_on_commit=False) as s:
        add_dag(s, serialized_chain())
        yield s


@pytest.mark.parametrize(("run_id", "rule"), BAD_RUN_IDS)
def test_trigger_refuses_a_bad_run_id_naming_the_rule(
    sqlite_session: Session, run_id: str, rule: str
) -> None:
    with pytest.raises(operations.InvalidRequest) as bad:
        operations.trigger_dag(sqlite_session, "etl", run_id=run_id, now=NOW)
    assert bad.value.field == "dag_run_id"
    assert rule in bad.value.message
    assert sqlite_session.scalars(select(DagRun)).first() is None


@pytest.mark.parametrize(
    "run_id",
    [
        "r1",
        "manual__mine",
        "2026-01-01T00:00:00+00:00",
        "nightly run 7",
        "a.b_c-d~e:f+g@h",
        "élan-étoile",
        "x" * 248,
        "my_scheduled__run",
    ],
)
def test_trigger_accepts_an_ordinary_run_id(sqlite_session: Session, run_id: str) -> None:
    run = operations.trigger_dag(sqlite_session, "etl", run_id=run_id, now=NOW)
    assert run.run_id == run_id


# --- clear -----------------------------------------------------------------------------------


def test_clear_with_downstream_resets_tries_and_requeues_the_run(
    session: Session, hook_calls: list[int]
) -> None:
    dag = add_dag(session, serialized_chain(retries=2))
    states = {
        "extract": "success",
        "transform": "failed",
        "load": "upstream_failed",
        "report": "success",
    }
    run = add_run(session, dag, "r", states, run_state="failed")
    session.commit()
    cleared = operations.clear_task_instances(
        session, "etl", "r", ["transform"], include_downstream=True, now=NOW
    )
    session.commit()
    assert sorted(ti.task_id for ti in cleared) == ["load", "transform"]
    assert ti_states(session, run) == {**states, "transform": None, "load": None}
    transform = ti_of(session, run, "transform")
    assert transform.max_tries == 1 + 2  # try_number + retries
    assert transform.end_date is None and transform.error is None
    assert run.state == "queued" and run.end_date is None and run.start_date is None
    assert run.needs_evaluation
    assert hook_calls == [1]


def test_clear_running_try_closes_it_and_dry_run_changes_nothing(session: Session) -> None:
    dag = add_dag(session, serialized_chain())
    states = {"extract": "running", "transform": None, "load": None, "report": None}
    run = add_run(session, dag, "r", states)
    preview = operations.clear_task_instances(session, "etl", "r", dry_run=True)
    assert len(preview) == 4 and ti_states(session, run)["extract"] == "running"
    only_failed = operations.clear_task_instances(session, "etl", "r", only_failed=True)
    assert only_failed == []
    operations.clear_task_instances(session, "etl", "r", ["extract"], now=NOW)
    extract = ti_of(session, run, "extract")
    assert extract.state is None and extract.try_number == 1
    row = session.scalars(
        select(TaskInstanceTry).where(TaskInstanceTry.task_instance_id == extract.id)
    ).one()
    assert row.state == "failed" and row.end_date == NOW
    assert run.state == "running"  # an active run is not requeued, only re-evaluated
    assert run.needs_evaluation
    with pytest.raises(operations.TaskNotFound, match="'nope'"):
        operations.clear_task_instances(session, "etl", "r", ["nope"])
    with pytest.raises(operations.DagRunNotFound, match="'missing'"):
        operations.clear_task_instances(session, "etl", "missing")


# --- mark states -------------------------------------------------------------------------------


def test_mark_task_success_clears_failed_downstream(session: Session) -> None:
    dag = add_dag(session, serialized_chain())
    states = {
        "extract": "success",
        "transform": "failed",
        "load": "upstream_failed",
        "report": "success",
    }
    run = add_run(session, dag, "r", states, run_state="failed")
    altered = operations.set_task_instance_state(
        session, "etl", "r", "transform", "success", now=NOW
    )
    assert [ti.task_id for ti in altered] == ["transform"]
    assert ti_states(session, run) == {**states, "transform": "success", "load": None}
    assert run.state == "queued" and run.needs_evaluation
    with pytest.raises(operations.InvalidRequest, match="new_state"):
        operations.set_task_instance_state(session, "etl", "r", "load", "running")


def test_mark_task_failed_with_downstream_stops_a_running_try(session: Session) -> None:
    dag = add_dag(session, serialized_chain())
    states = {"extract": "success", "transform": "running", "load": None, "report": "success"}
    run = add_run(session, dag, "r", states)
    altered = operations.set_task_instance_state(
        session, "etl", "r", "transform", "failed", include_downstream=True, now=NOW
    )
    assert sorted(ti.task_id for ti in altered) == ["load", "transform"]
    transform = ti_of(session, run, "transform")
    assert transform.state == "failed" and transform.end_date == NOW
    # As Airflow: failed downstream of the marked task are cleared so the run re-decides them.
    assert ti_of(session, run, "load").state is None


def test_cancel_fails_running_skips_pending_and_keeps_finished(session: Session) -> None:
    dag = add_dag(session, serialized_chain())
    states = {"extract": "success", "transform": "running", "load": None, "report": "queued"}
    run = add_run(session, dag, "r", states)
    operations.cancel_dag_run(session, "etl", "r")
    assert ti_states(session, run) == {
        "extract": "success",
        "transform": "failed",
        "load": "skipped",
        "report": "skipped",
    }
    assert run.state == "failed" and run.end_date is not None and run.needs_evaluation


def test_mark_run_success_then_queued(session: Session) -> None:
    dag = add_dag(session, serialized_chain())
    states = {"extract": "failed", "transform": "upstream_failed", "load": None, "report": None}
    run = add_run(session, dag, "r", states, run_state="failed")
    operations.set_dag_run_state(session, "etl", "r", "success", now=NOW)
    assert set(ti_states(session, run).values()) == {"success"}
    assert run.state == "success" and run.end_date == NOW
    operations.set_dag_run_state(session, "etl", "r", "queued", now=NOW)
    assert run.state == "queued" and run.end_date is None and run.queued_at == NOW
    with pytest.raises(operations.InvalidRequest, match="state"):
        operations.set_dag_run_state(session, "etl", "r", "running")


# --- pause and reads ---------------------------------------------------------------------------


def test_pause_unpause_and_list_dags(session: Session) -> None:
    etl = add_dag(session, serialized_chain(), paused=True)
    add_dag(session, serialized_chain("other"))
    add_run(session, etl, "old", {"extract": "success"}, run_state="success")
    add_run(session, etl, "new", {"extract": "failed"}, run_state="failed")
    operations.set_paused(session, "etl", False)
    assert not etl.is_paused and etl.needs_next_dagrun
    operations.set_paused(session, "other", True)
    page = operations.list_dags(session, paused=False)
    assert [s.dag.dag_id for s in page.items] == ["etl"]
    summary = page.items[0]
    assert summary.last_run is not None and summary.last_run.run_id == "new"
    assert [s.dag.dag_id for s in operations.list_dags(session, tags=["team-a"]).items] == ["etl"]
    second = operations.list_dags(session, limit=1, offset=1)
    assert [s.dag.dag_id for s in second.items] == ["other"] and second.total_entries == 2
    progress = operations.run_progress(session, "etl", "new")
    assert (progress.total, progress.done, progress.failed) == (1, 1, 1)
    assert progress.errors == {"extract": "boom"}


def test_recent_runs_of_many_dags_in_one_query(engine: Engine) -> None:
    with Session(engine) as session:
        etl = add_dag(session, serialized_chain("etl"))
        add_dag(session, serialized_chain("quiet"))
        for n in range(7):
            add_run(session, etl, f"run_{n}", {"extract": "success"}, run_state="success")
        session.commit()
        found = operations.recent_runs(session, ["etl", "quiet"], 5)
        assert [r.run_id for r in found["etl"]] == [f"run_{n}" for n in (6, 5, 4, 3, 2)]
        assert found["quiet"] == []
        assert operations.recent_runs(session, [], 5) == {}
        light = operations.list_dag_models(session)
        assert [d.dag_id for d in light] == ["etl", "quiet"]
        assert light[0].serialized["dag_id"] == "etl"  # still readable when asked for
