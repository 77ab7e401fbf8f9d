"""``ketch tasks mark``, ``ketch dags cancel`` and ``ketch dags mark-run`` through CliRunner."""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch import cli
from ketch.db.models import DagRun, TaskInstanceTry
from tests.unit.test_operations import add_dag, add_run, serialized_chain, ti_of, ti_states


@pytest.fixture(autouse=True)
def _database_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the database backend: a KETCH_API_URL in the shell must not count."""
    monkeypatch.delenv("KETCH_API_URL", raising=False)
    monkeypatch.delenv("KETCH_API_TOKEN", raising=False)


def ketch(*args: str) -> Result:
    return CliRunner().invoke(cli.cli, list(args), catch_exceptions=False)


@pytest.fixture
def db(sqlite_engine: Engine) -> Engine:
    """etl: run "failed_run" (transform failed, load upstream_failed), run "live"
    (extract running, the rest not started), run "done" (all success)."""
    with Session(sqlite_engine) as session:
        etl = add_dag(session, serialized_chain())
        add_run(
            session,
            etl,
            "failed_run",
            {
                "extract": "success",
                "transform": "failed",
                "load": "upstream_failed",
                "report": "success",
            },
            run_state="failed",
        )
        add_run(
            session,
            etl,
            "live",
            {"extract": "running", "transform": None, "load": None, "report": None},
        )
        add_run(
            session,
            etl,
            "done",
            dict.fromkeys(serialized_chain().tasks, "success"),
            run_state="success",
        )
        session.commit()
    return sqlite_engine


def run_of(session: Session, run_id: str) -> DagRun:
    return session.scalars(select(DagRun).where(DagRun.run_id == run_id)).one()


# --- tasks mark ------------------------------------------------------------------------------


def test_mark_success_clears_failed_downstream_so_the_run_resumes(db: Engine) -> None:
    result = ketch("tasks", "mark", "etl", "failed_run", "transform", "--state", "success")
    assert result.exit_code == 0, result.output
    assert "marked 1 task instance(s) of run failed_run success: transform" in result.output
    with Session(db) as session:
        run = run_of(session, "failed_run")
        states = ti_states(session, run)
        assert states["transform"] == "success" and states["load"] is None  # cleared
        assert run.state == "queued" and run.needs_evaluation


def test_mark_failed_with_downstream_stops_the_running_try(db: Engine) -> None:
    result = ketch("tasks", "mark", "etl", "live", "extract", "--state", "failed", "--downstream")
    assert result.exit_code == 0, result.output
    # As Airflow: the downstream TIs are marked, then cleared as failed downstream tasks
    # (the scheduler then makes them upstream_failed).
    assert "marked 1 task instance(s) of run live failed: extract" in result.output
    assert "cleared again as failed downstream tasks: load, report, transform" in result.output
    with Session(db) as session:
        run = run_of(session, "live")
        assert ti_states(session, run) == {
            "extract": "failed",
            "transform": None,
            "load": None,
            "report": None,
        }
        assert run.needs_evaluation
        extract = ti_of(session, run, "extract")
        try_row = session.scalars(
            select(TaskInstanceTry).where(TaskInstanceTry.task_instance_id == extract.id)
        ).one()
        assert try_row.state == "failed" and try_row.end_date is not None
    again = ketch("tasks", "mark", "etl", "live", "extract", "--state", "failed")
    assert again.exit_code == 0 and "nothing to mark: already failed" in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", "live", "extract"), "DAG 'nope' not found"),
        (("etl", "nope", "extract"), "DAG run 'nope' of DAG 'etl' not found"),
        (("etl", "live", "nope"), "task 'nope' not found in DAG 'etl'"),
    ],
)
def test_mark_names_what_is_missing(db: Engine, args: tuple[str, ...], message: str) -> None:
    result = ketch("tasks", "mark", *args, "--state", "success")
    assert result.exit_code == 1 and message in result.output
    with Session(db) as session:
        assert ti_states(session, run_of(session, "live"))["extract"] == "running"


def test_mark_requires_a_valid_state(db: Engine) -> None:
    assert ketch("tasks", "mark", "etl", "live", "extract").exit_code == 2
    bad = ketch("tasks", "mark", "etl", "live", "extract", "--state", "running")
    assert bad.exit_code == 2 and "'running' is not one of" in bad.output


# --- dags cancel -----------------------------------------------------------------------------


def test_cancel_fails_the_run_and_its_running_tries(db: Engine) -> None:
    result = ketch("dags", "cancel", "etl", "live")
    assert result.exit_code == 0, result.output
    assert "run live of DAG etl cancelled (failed); 1 running tries stopped" in result.output
    with Session(db) as session:
        run = run_of(session, "live")
        assert run.state == "failed" and run.end_date is not None
        assert ti_states(session, run) == {
            "extract": "failed",
            "transform": "skipped",
            "load": "skipped",
            "report": "skipped",
        }


def test_cancel_leaves_a_finished_run_alone(db: Engine) -> None:
    result = ketch("dags", "cancel", "etl", "done")
    assert result.exit_code == 0 and "already finished (success)" in result.output
    with Session(db) as session:
        assert run_of(session, "done").state == "success"


@pytest.mark.parametrize(
    ("args", "message"),
    [(("nope", "live"), "DAG 'nope' not found"), (("etl", "nope"), "DAG run 'nope' of DAG 'etl'")],
)
def test_cancel_names_what_is_missing(db: Engine, args: tuple[str, ...], message: str) -> None:
    result = ketch("dags", "cancel", *args)
    assert result.exit_code == 1 and message in result.output


# --- dags mark-run ---------------------------------------------------------------------------


def test_mark_run_success_and_queued(db: Engine) -> None:
    ok = ketch("dags", "mark-run", "etl", "live", "--state", "success")
    assert ok.exit_code == 0 and "run live of DAG etl marked success" in ok.output
    with Session(db) as session:
        run = run_of(session, "live")
        assert run.state == "success" and set(ti_states(session, run).values()) == {"success"}
    queued = ketch("dags", "mark-run", "etl", "failed_run", "--state", "queued")
    assert queued.exit_code == 0, queued.output
    with Session(db) as session:
        run = run_of(session, "failed_run")
        assert run.state == "queued" and run.end_date is None
        assert ti_states(session, run)["transform"] == "failed"  # task instances untouched


def test_mark_run_errors(db: Engine) -> None:
    missing = ketch("dags", "mark-run", "etl", "nope", "--state", "failed")
    assert missing.exit_code == 1 and "DAG run 'nope' of DAG 'etl' not found" in missing.output
    unknown_dag = ketch("dags", "mark-run", "nope", "live", "--state", "failed")
    assert unknown_dag.exit_code == 1 and "DAG 'nope' not found" in unknown_dag.output
    assert ketch("dags", "mark-run", "etl", "live", "--state", "running").exit_code == 2
