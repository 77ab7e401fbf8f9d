"""The CLI's remote mode: the same commands through a real ketch web server's REST API.

A uvicorn server on a free loopback port serves ``create_app`` on the test's SQLite
database; the CLI runs with ``KETCH_API_URL`` pointing at it and must print what it
prints on the database for the same data, without ever opening the database itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch import cli
from ketch.config import Settings, get_settings
from ketch.db.models import ImportError_, TaskInstance
from tests.support.postgres import free_port
from tests.unit.test_cli import _finish_run_later
from tests.unit.test_operations import add_dag, add_run, serialized_chain


@pytest.fixture(autouse=True)
def _no_inherited_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KETCH_API_URL", raising=False)
    monkeypatch.delenv("KETCH_API_TOKEN", raising=False)


class WebServer:
    """``create_app(settings)`` served by uvicorn in a thread on 127.0.0.1."""

    def __init__(self, settings: Settings) -> None:
        from ketch.api.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> WebServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def local(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli.cli, list(args), input=input, catch_exceptions=False)


def remote_with(url: str, *args: str, token: str | None = None, input: str | None = None) -> Result:
    env = {"KETCH_API_URL": url}
    if token is not None:
        env["KETCH_API_TOKEN"] = token
    return CliRunner().invoke(cli.cli, list(args), input=input, env=env, catch_exceptions=False)


@pytest.fixture
def no_database_in_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """While set, a CLI command that opens the database fails the test (the server's own
    sessions are unaffected: they come from the app's session factory)."""
    from ketch.cli import _common

    def refuse(_settings: Settings) -> Engine:
        raise AssertionError("remote mode opened the metadata database")

    monkeypatch.setattr(_common, "reachable_engine", refuse)
    yield


@pytest.fixture
def db(sqlite_engine: Engine) -> Engine:
    from datetime import UTC, datetime

    with Session(sqlite_engine) as session:
        etl = add_dag(session, serialized_chain())
        add_dag(session, serialized_chain("other"), paused=True)
        states = {"extract": "success", "transform": "failed", "load": "upstream_failed"}
        add_run(session, etl, "r1", {**states, "report": "success"}, run_state="failed")
        add_run(
            session,
            etl,
            "live",
            {"extract": "running", "transform": None, "load": None, "report": None},
        )
        session.add(
            ImportError_(
                filename="/dags/broken.py",
                stacktrace="Traceback (most recent call last):\n  ...\nNameError: x\n",
                timestamp=datetime(2026, 1, 2, tzinfo=UTC),
            )
        )
        session.commit()
    return sqlite_engine


@pytest.fixture
def server(db: Engine) -> Iterator[WebServer]:
    with WebServer(get_settings()) as web:
        yield web


class Both:
    """Runs a command on the database, then through the server, and returns both."""

    def __init__(self, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.url = url
        self.monkeypatch = monkeypatch

    def remote(self, *args: str, token: str | None = None, input: str | None = None) -> Result:
        from ketch.cli import _common

        with self.monkeypatch.context() as patch:

            def refuse(_settings: Settings) -> Engine:
                raise AssertionError("remote mode opened the metadata database")

            patch.setattr(_common, "reachable_engine", refuse)
            return remote_with(self.url, *args, token=token, input=input)

    def same(self, *args: str) -> str:
        here, there = local(*args), self.remote(*args)
        assert here.exit_code == there.exit_code, (here.output, there.output)
        assert here.output == there.output
        return here.output


@pytest.fixture
def both(server: WebServer, monkeypatch: pytest.MonkeyPatch) -> Both:
    return Both(server.url, monkeypatch)


# --- the same output for the same data ---------------------------------------------------------


def test_listings_are_the_same_on_the_database_and_through_the_api(both: Both) -> None:
    table = both.same("dags", "list")
    assert table.splitlines()[2].split()[:2] == ["etl", "no"]
    assert [d["dag_id"] for d in json.loads(both.same("dags", "list", "-o", "json"))] == [
        "etl",
        "other",
    ]
    both.same("dags", "list", "--paused", "-o", "json")
    both.same("dags", "list", "--tag", "team-a")
    assert "r1" in both.same("dags", "runs", "etl")
    both.same("dags", "runs", "etl", "-o", "json", "--limit", "1")
    both.same("dags", "runs", "etl", "--state", "failed")
    assert "NameError: x" in both.same("dags", "errors")
    both.same("dags", "errors", "-o", "json")
    assert "transform" in both.same("tasks", "list", "etl")
    both.same("tasks", "list", "etl", "-o", "json")
    both.same("tasks", "states", "etl", "r1")
    both.same("tasks", "states", "etl", "r1", "-o", "json")
    assert "default_pool" in both.same("pools", "list")
    both.same("pools", "list", "-o", "json")
    both.same("variables", "sync-status", "-o", "json")


def test_errors_are_the_apis_detail_and_the_same_as_on_the_database(both: Both) -> None:
    missing_dag = both.same("dags", "runs", "nope")
    assert missing_dag.startswith("ketch: DAG 'nope' not found; 1 DAG file failed to import")
    both.same("tasks", "states", "etl", "nope")
    both.same("tasks", "logs", "etl", "r1", "nope")
    both.same("dags", "trigger", "nope")
    both.same("dags", "pause", "nope")
    both.same("pools", "delete", "nope")
    default_pool = both.same("pools", "delete", "default_pool")  # 400 through the API
    assert "cannot be deleted" in default_pool
    assert both.same("dags", "trigger", "etl", "--conf", '{"n": 0}').startswith("ketch: param 'n'")
    both.same("dags", "trigger", "etl", "--conf", "[1]")
    both.same("variables", "get", "nope")
    both.same("connections", "get", "nope")
    both.same("tasks", "logs", "etl", "r1", "transform", "--try", "2")


def test_xcom_is_the_same_on_the_database_and_through_the_api(both: Both, db: Engine) -> None:
    from tests.unit.test_cli import XCOM_VALUE, add_return_value

    add_return_value(db, "extract", XCOM_VALUE)
    assert json.loads(both.same("tasks", "xcom", "etl", "r1", "extract")) == XCOM_VALUE
    both.same("tasks", "xcom", "etl", "r1", "extract", "--key", "nope")
    both.same("tasks", "xcom", "etl", "nope", "extract")


def test_validation_errors_name_the_field(both: Both) -> None:
    refused = both.remote("pools", "set", "--", "p", "-1")
    assert refused.exit_code == 1
    assert refused.output.startswith("ketch: slots: ") and len(refused.output.splitlines()) == 1


def test_trigger_conflict_pause_mark_cancel(both: Both, db: Engine) -> None:
    made = both.remote(
        "dags", "trigger", "etl", "--conf", '{"n": 4}', "--run-id", "x1", "-o", "json"
    )
    assert made.exit_code == 0, made.output
    run = json.loads(made.output)
    assert run["dag_run_id"] == "x1" and run["params"] == {"n": 4} and run["state"] == "queued"
    assert set(run) == set(json.loads(local("dags", "runs", "etl", "-o", "json").output)[0])
    again = both.remote("dags", "trigger", "etl", "--run-id", "x1")  # 409
    assert (
        again.exit_code == 1
        and again.output == local("dags", "trigger", "etl", "--run-id", "x1").output
    )
    dated = both.remote("dags", "trigger", "etl", "--logical-date", "2026-03-01", "-o", "json")
    assert json.loads(dated.output)["logical_date"].startswith("2026-03-01T00:00:00")
    paused = both.remote("dags", "trigger", "other")
    assert paused.exit_code == 0 and "is paused" in paused.output

    assert both.remote("dags", "unpause", "other").output == "DAG other unpaused\n"
    assert not json.loads(local("dags", "list", "-o", "json").output)[1]["is_paused"]
    assert both.remote("dags", "pause", "other").output == "DAG other paused\n"

    marked = both.remote("dags", "mark-run", "etl", "x1", "--state", "success")
    assert marked.output == "run x1 of DAG etl marked success\n"
    cancelled = both.remote("dags", "cancel", "etl", "live")
    assert cancelled.output == "run live of DAG etl cancelled (failed); 1 running tries stopped\n"
    assert both.same("dags", "cancel", "etl", "live").endswith(
        "already finished (failed): not changed\n"
    )


def test_clear_and_mark_through_the_api(both: Both, db: Engine) -> None:
    declined = both.remote("tasks", "clear", "etl", "r1", "-t", "transform", "-d", input="n\n")
    assert declined.exit_code == 1 and "transform (failed)" in declined.output
    assert "load (upstream_failed)" in declined.output
    done = both.remote("tasks", "clear", "etl", "r1", "-t", "transform", "--downstream", "--yes")
    assert done.exit_code == 0 and "cleared 2 task instance(s) of run r1" in done.output
    with Session(db) as session:
        states = dict(
            session.execute(
                select(TaskInstance.task_id, TaskInstance.state).where(TaskInstance.run_id == "r1")
            ).all()
        )
    assert states == {"extract": "success", "transform": None, "load": None, "report": "success"}
    assert both.remote("tasks", "clear", "etl", "r1", "--only-failed", "-y").output == (
        "nothing to clear\n"
    )
    marked = both.remote("tasks", "mark", "etl", "r1", "transform", "--state", "success")
    assert marked.output == "marked 1 task instance(s) of run r1 success: transform\n"
    again = both.remote("tasks", "mark", "etl", "r1", "transform", "--state", "success")
    assert again.output == "nothing to mark: already success\n"


def test_trigger_wait_follows_the_run_through_the_api(
    both: Both, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.dags, "WAIT_POLL_SECONDS", 0.02)
    with Session(db) as session:
        add_dag(session, serialized_chain("waited"))
        session.commit()
    player = _finish_run_later(db, "waited", fail="transform")
    result = both.remote("dags", "trigger", "waited", "--wait")
    player.join()
    assert result.exit_code == 1, result.output
    assert "failed: transform: ValueError: bad input" in result.output
    assert "4/4 tasks done, 1 failed" in result.output
    assert result.output.rstrip().endswith("failed")


def test_logs_through_the_api(both: Both) -> None:
    from ketch.executors.base import TryKey
    from ketch.worker.task_log import log_path

    path = log_path(get_settings().log_folder, TryKey("etl", "r1", "transform", 1))
    path.parent.mkdir(parents=True)
    path.write_text("hello from the try\nsecond line\n\nafter a blank line\n")
    expected = path.read_text()
    assert both.remote("tasks", "logs", "etl", "r1", "transform").output == expected
    followed = both.remote("tasks", "logs", "etl", "r1", "transform", "--follow")
    assert followed.exit_code == 0 and followed.output == expected  # finished: all, then stop
    no_log = both.remote("tasks", "logs", "etl", "r1", "extract")
    assert no_log.exit_code == 1 and "no log for try 1 of task 'extract'" in no_log.output


def test_follow_prints_a_live_log_until_the_try_ends(both: Both, db: Engine) -> None:
    from ketch.executors.base import TryKey
    from ketch.logs import reader
    from ketch.worker.task_log import log_path

    path = log_path(get_settings().log_folder, TryKey("etl", "live", "extract", 1))
    path.parent.mkdir(parents=True)
    path.write_text("first\n")

    def write_then_finish() -> None:
        time.sleep(0.5)
        with path.open("a") as fh:
            fh.write("second\n")
        time.sleep(0.3)
        with path.open("a") as fh:
            fh.write("last\n")  # written as the try ends: still printed
        with Session(db) as session:
            ti = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.run_id == "live", TaskInstance.task_id == "extract"
                )
            ).one()
            ti.state = "success"
            session.commit()

    old = reader.STATE_CHECK_SECONDS
    reader.STATE_CHECK_SECONDS = 0.1
    writer = threading.Thread(target=write_then_finish)
    writer.start()
    try:
        followed = both.remote("tasks", "logs", "etl", "live", "extract", "-f")
    finally:
        writer.join()
        reader.STATE_CHECK_SECONDS = old
    assert followed.exit_code == 0, followed.output
    assert followed.output == "first\nsecond\nlast\n"


def test_variables_and_connections_through_the_api(both: Both, tmp_path: Path) -> None:
    assert both.remote("variables", "set", "env", "prod", "--description", "stage").exit_code == 0
    assert both.remote("variables", "set", "db_password", "hunter22").exit_code == 0
    assert both.remote("variables", "set", "j", '{"a": [1]}', "--json").exit_code == 0
    listed = both.same("variables", "list")
    assert "hunter22" not in listed and "***" in listed
    both.same("variables", "list", "-o", "json")
    assert both.remote("variables", "get", "env").output == "prod\n"
    assert json.loads(both.remote("variables", "get", "j", "--json").output) == {"a": [1]}
    assert both.remote("variables", "get", "nope", "--default", "d").output == "d\n"
    hidden = both.remote("variables", "get", "db_password")
    assert hidden.exit_code == 1 and "is sensitive" in hidden.output
    assert "hunter22" not in hidden.output
    assert local("variables", "get", "db_password").output == "hunter22\n"

    refused = both.remote("variables", "export", str(tmp_path / "all.json"))
    assert refused.exit_code == 1 and "db_password" in refused.output
    assert both.remote("variables", "delete", "db_password").exit_code == 0
    out, back = tmp_path / "remote.json", tmp_path / "local.json"
    assert both.remote("variables", "export", str(out)).exit_code == 0
    assert local("variables", "export", str(back)).exit_code == 0
    assert json.loads(out.read_text()) == json.loads(back.read_text())
    (tmp_path / "in.json").write_text(json.dumps({"a": "1", "b": {"x": 2}}))
    imported = both.remote("variables", "import", str(tmp_path / "in.json"))
    assert imported.output.startswith("2 variables imported")
    (tmp_path / "bad.json").write_text("[1]")
    assert both.same("variables", "import", str(tmp_path / "bad.json")).startswith("ketch: file: ")
    assert both.same("variables", "delete", "nope") == "ketch: variable 'nope' not found\n"

    added = both.remote(
        "connections", "add", "pg", "--conn-uri", "postgres://u:pw@db.example.com:5432/app"
    )
    assert added.exit_code == 0, added.output
    both.remote("connections", "add", "web", "--conn-type", "http", "--conn-host", "example.com")
    assert both.same("connections", "add", "web", "--conn-type", "http").startswith(
        "ketch: connection 'web' already exists"
    )
    both.same("connections", "list")
    both.same("connections", "list", "-o", "json")
    assert both.same("connections", "get", "web", "-o", "uri") == "http://example.com\n"
    masked = both.remote("connections", "get", "pg")
    assert (
        json.loads(masked.stdout)["password"] == "***"
        and "never returns passwords" in masked.stderr
    )
    assert json.loads(local("connections", "get", "pg").output)["password"] == "pw"
    no_uri = both.remote("connections", "get", "pg", "-o", "uri")
    assert no_uri.exit_code == 1 and "has a password" in no_uri.output
    assert both.remote("connections", "export", str(tmp_path / "c.json")).exit_code == 1
    assert both.remote("connections", "delete", "pg").output == "connection pg deleted\n"
    assert both.remote("connections", "export", str(out)).exit_code == 0
    assert local("connections", "export", str(back)).exit_code == 0
    assert json.loads(out.read_text()) == json.loads(back.read_text())
    (tmp_path / "conns.json").write_text(json.dumps({"site": "http://example.org"}))
    assert both.remote("connections", "import", str(tmp_path / "conns.json")).exit_code == 0
    no_overwrite = both.remote(
        "connections", "import", str(tmp_path / "conns.json"), "--no-overwrite"
    )
    assert no_overwrite.exit_code == 1 and "--no-overwrite" in no_overwrite.output


def test_pools_through_the_api(both: Both) -> None:
    assert both.remote("pools", "set", "big", "4", "--description", "d").output == (
        "pool big created: 4 slots\n"
    )
    assert both.remote("pools", "set", "big", "6").output == "pool big updated: 6 slots\n"
    assert "big" in both.same("pools", "list")
    assert both.remote("pools", "delete", "big").output == "pool big deleted\n"


def test_database_only_commands_say_so(both: Both) -> None:
    for args in (("rotate-fernet-key",), ("variables", "sync", "--once")):
        refused = both.remote(*args)
        assert refused.exit_code == 1 and "has no REST API" in refused.output


# --- unreachable and misconfigured -------------------------------------------------------------


def test_an_unreachable_server_is_one_line(no_database_in_cli: None) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = remote_with(url, "dags", "list", token="ketch_secret-never-shown")
    assert result.exit_code == 1
    assert result.output.startswith(f"ketch: cannot reach KETCH_API_URL={url}")
    assert len(result.output.splitlines()) == 1 and "ketch_secret" not in result.output
    with_credentials = remote_with(f"http://me:pw@127.0.0.1:{free_port()}/api/v1/", "dags", "list")
    assert with_credentials.exit_code == 1 and "pw" not in with_credentials.output
    bad = remote_with("ftp://example.com", "dags", "list")
    assert bad.exit_code == 1 and "KETCH_API_URL must look like" in bad.output


def test_api_url_option_and_what_remote_mode_does_not_change(
    server: WebServer, no_database_in_cli: None
) -> None:
    by_option = CliRunner().invoke(cli.cli, ["--api-url", server.url + "/", "dags", "list"])
    assert by_option.exit_code == 0 and "etl" in by_option.output
    with_prefix = remote_with(server.url + "/api/v1", "pools", "list")
    assert with_prefix.exit_code == 0 and "default_pool" in with_prefix.output
    # Commands without state to share do not need the server (nor the database).
    assert remote_with(server.url, "--help").exit_code == 0


def test_the_ketch_command_needs_no_database_in_remote_mode(server: WebServer) -> None:
    """The real entry point in its own process, its database setting pointing nowhere."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("KETCH")}
    env["KETCH_API_URL"] = server.url
    env["KETCH__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql://nobody:pw@127.0.0.1:1/none"
    proc = subprocess.run(
        [sys.executable, "-m", "ketch", "dags", "list", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [d["dag_id"] for d in json.loads(proc.stdout)] == ["etl", "other"]
