"""Messages a new user meets in the first hour: a paused DAG that ``dags trigger --wait``
would wait on forever, and "DAG not found" when the DAG's file failed to import.

Each is checked on the database and through a real web server (the CLI's remote mode,
and the REST API's 404 detail).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch import cli
from ketch.config import get_settings
from ketch.dag_processing.hints import SEE, import_error_hint
from ketch.db.models import DagModel, DagRun, ImportError_
from tests.unit.test_cli import _finish_run_later
from tests.unit.test_cli_remote import WebServer, local, remote_with
from tests.unit.test_operations import add_dag, serialized_chain

PAUSED_WAIT = (
    "ketch: DAG other is paused: the run was created but will not start; "
    "unpause it (ketch dags unpause other) or pass --unpause\n"
)


@pytest.fixture(autouse=True)
def _no_inherited_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KETCH_API_URL", raising=False)
    monkeypatch.delenv("KETCH_API_TOKEN", raising=False)


@pytest.fixture
def dags_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "dags"
    folder.mkdir()
    monkeypatch.setenv("KETCH__CORE__DAGS_FOLDER", str(folder))
    get_settings.cache_clear()
    return folder


@pytest.fixture
def db(sqlite_engine: Engine, dags_folder: Path) -> Engine:
    with Session(sqlite_engine) as session:
        add_dag(session, serialized_chain())
        add_dag(session, serialized_chain("other"), paused=True)
        session.commit()
    return sqlite_engine


@pytest.fixture
def server(db: Engine) -> Iterator[WebServer]:
    with WebServer(get_settings()) as web:
        yield web


def add_import_error(engine: Engine, path: Path, body: str, error: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    with Session(engine) as session:
        session.add(
            ImportError_(
                filename=str(path),
                stacktrace=f"Traceback (most recent call last):\n  ...\n{error}\n",
                timestamp=datetime(2026, 1, 2, tzinfo=UTC),
            )
        )
        session.commit()


def runs_of(engine: Engine, dag_id: str) -> list[DagRun]:
    with Session(engine) as session:
        return list(session.scalars(select(DagRun).where(DagRun.dag_id == dag_id)))


def is_paused(engine: Engine, dag_id: str) -> bool:
    with Session(engine) as session:
        dag = session.get(DagModel, dag_id)
        assert dag is not None
        return dag.is_paused


def modes(server: WebServer) -> list[tuple[str, object]]:
    return [
        ("local", local),
        ("remote", lambda *args: remote_with(server.url, *args)),
    ]


# --- dags trigger on a paused DAG ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_trigger_wait_on_a_paused_dag_says_so_and_exits(
    db: Engine, server: WebServer, mode: str
) -> None:
    ketch = dict(modes(server))[mode]
    result: Result = ketch("dags", "trigger", "other", "--wait")  # type: ignore[operator]
    assert result.exit_code == 1
    assert result.stderr == PAUSED_WAIT  # one line, at once
    assert result.stdout.startswith("triggered DAG other: run manual__")
    [run] = runs_of(db, "other")
    assert run.state == "queued" and is_paused(db, "other")


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_trigger_of_a_paused_dag_without_wait_warns_on_stderr(
    db: Engine, server: WebServer, mode: str
) -> None:
    ketch = dict(modes(server))[mode]
    result: Result = ketch("dags", "trigger", "other", "-o", "json")  # type: ignore[operator]
    assert result.exit_code == 0
    run = json.loads(result.stdout)  # stdout stays the run alone
    assert result.stderr == (
        f"warning: DAG other is paused: run {run['dag_run_id']} stays queued until it is "
        "unpaused (ketch dags unpause other, or trigger with --unpause)\n"
    )
    unpaused = ketch("dags", "trigger", "etl")  # type: ignore[operator]
    assert unpaused.exit_code == 0 and unpaused.stderr == ""


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_trigger_unpause_wait_unpauses_then_follows_the_run(
    db: Engine, server: WebServer, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ketch = dict(modes(server))[mode]
    monkeypatch.setattr(cli.dags, "WAIT_POLL_SECONDS", 0.02)
    player = _finish_run_later(db, "other", fail=None)
    try:
        result: Result = ketch("dags", "trigger", "other", "--unpause", "--wait")  # type: ignore[operator]
    finally:
        player.join(30)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("DAG other unpaused\ntriggered DAG other: run manual__")
    assert "4/4 tasks done, 0 failed" in result.stdout and result.stderr == ""
    assert not is_paused(db, "other")


# --- DAG not found, and files that failed to import ------------------------------------------


def test_hint_counts_errors_and_names_the_file_that_may_define_the_dag(
    sqlite_engine: Engine, dags_folder: Path
) -> None:
    def hint(dag_id: str) -> str:
        with Session(sqlite_engine) as session:
            return import_error_hint(session, dag_id, dags_folder=dags_folder)

    assert hint("etl") == ""
    add_import_error(
        sqlite_engine, dags_folder / "a.py", "import ketch  # dag\n", "NameError: x is not defined"
    )
    add_import_error(
        sqlite_engine,
        dags_folder / "team" / "reports.py",
        "from ketch import dag\n@dag()\ndef weekly_report(): ...\nraise ValueError('oops')\n",
        "ValueError: oops",
    )
    assert hint("nope") == f"; 2 DAG files failed to import: see {SEE}"
    assert hint("report") == f"; 2 DAG files failed to import: see {SEE}"  # not a word there
    assert hint("weekly_report") == (
        f"; DAG file team/reports.py (ValueError: oops) failed to import and may define it: "
        f"see {SEE}"
    )
    assert hint("a") == (
        f"; DAG file a.py (NameError: x is not defined) failed to import and may define it: "
        f"see {SEE}"
    )
    assert hint("dag").startswith("; DAG files a.py (NameError")  # both mention the word


def test_dag_not_found_points_at_import_errors_on_the_cli_and_the_rest_api(
    db: Engine, server: WebServer, dags_folder: Path
) -> None:
    plain = "ketch: DAG 'weekly' not found\n"
    assert local("dags", "trigger", "weekly").output == plain
    assert remote_with(server.url, "dags", "trigger", "weekly").output == plain

    add_import_error(db, dags_folder / "other_stuff.py", "import ketch  # dag\n", "KeyError: 'k'")
    counted = f"ketch: DAG 'weekly' not found; 1 DAG file failed to import: see {SEE}\n"
    for args in (("dags", "trigger", "weekly"), ("tasks", "list", "weekly")):
        assert local(*args).output == counted
        assert remote_with(server.url, *args).output == counted
    detail = httpx.get(f"{server.url}/api/v1/dags/weekly").json()["detail"]
    assert detail == counted.removeprefix("ketch: ").rstrip("\n")

    add_import_error(
        db,
        dags_folder / "weekly.py",
        "from ketch import DAG\nwith DAG('weekly'):\n    oops\n",
        "NameError: name 'oops' is not defined",
    )
    named = (
        "ketch: DAG 'weekly' not found; DAG file weekly.py (NameError: name 'oops' is not "
        f"defined) failed to import and may define it: see {SEE}\n"
    )
    assert local("dags", "runs", "weekly").output == named
    assert remote_with(server.url, "dags", "runs", "weekly").output == named
    runs = httpx.get(f"{server.url}/api/v1/dags/weekly/dagRuns")
    assert runs.status_code == 404
    assert runs.json()["detail"] == named.removeprefix("ketch: ").rstrip("\n")
    # A missing run of a DAG that exists is not about import errors.
    missing_run = httpx.get(f"{server.url}/api/v1/dags/etl/dagRuns/nope").json()["detail"]
    assert missing_run == "DAG run 'nope' of DAG 'etl' not found"
