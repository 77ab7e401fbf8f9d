"""A real task try (``python -m ketch.worker.runner``, as a pod runs it) reads variables
and a connection through a real execution API over loopback, on both backends."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch.api.app import create_app
from ketch.authoring.connection import Connection
from ketch.config import get_settings
from ketch.serialization import SerializedDag, SerializedSchedule, SerializedTask
from ketch.variables import store
from tests.unit._worker_support import DAG_ID, RUN_ID, DagSetup, add_dag_and_run, free_port

DAG_FILE = """
from datetime import datetime

from ketch import Connection, Variable, dag, task
from ketch.worker.secrets_mask import sensitive_values

# Top-level code runs again in the try, which has a token: the real value.
PARSE_TIME = Variable.get("bucket", default="parse-default")


@dag(dag_id="worker_test", schedule=None, start_date=datetime(2026, 1, 1))
def worker_test():
    @task
    def read_vars():
        return {
            "parse_time": PARSE_TIME,
            "bucket": Variable.get("bucket"),
            "cfg": Variable.get("cfg", deserialize_json=True),
            "default": Variable.get("missing", default="fallback"),
            "token": Variable.get("api_token"),
            "masked": sorted(sensitive_values()),
        }

    @task
    def read_missing():
        return Variable.get("missing")

    @task
    def read_conn():
        conn = Connection.get("warehouse")
        return {
            "host": conn.host,
            "port": conn.port,
            "login": conn.login,
            "extra": conn.extra_dejson,
            "uri": conn.get_uri(),
            "password_masked": conn.password in sensitive_values(),
        }

    read_vars()
    read_missing()
    read_conn()


worker_test()
"""

TASKS = ["read_vars", "read_missing", "read_conn"]


class WebServer:
    """The whole web app (REST + execution API) served by uvicorn in a thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/execution"
        config = uvicorn.Config(
            create_app(get_settings()), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> WebServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture
def setup(engine: Engine, tmp_path: Path) -> Iterator[tuple[DagSetup, str]]:
    folder = tmp_path / "dags"
    folder.mkdir()
    fileloc = folder / "worker_test.py"
    fileloc.write_text(DAG_FILE)
    dag = SerializedDag(
        dag_id=DAG_ID,
        fileloc=str(fileloc),
        relative_fileloc=fileloc.name,
        schedule=SerializedSchedule(kind="none"),
        tasks={t: SerializedTask(task_id=t, kind="python") for t in TASKS},
    )
    now = datetime.now(UTC)
    settings = get_settings()
    with Session(engine) as session:
        add_dag_and_run(session, dag, RUN_ID, now)
        store.set_variable(session, settings, "bucket", "s3://data")
        store.set_variable(session, settings, "cfg", {"tables": ["a", "b"]})
        store.set_variable(session, settings, "api_token", "tok-123456")
        store.set_connection(
            session,
            settings,
            Connection.from_uri(
                "warehouse", "postgres://etl:pa%24%24word@db.internal:5432/wh?sslmode=require"
            ),
        )
        session.commit()
    with WebServer() as server:
        yield DagSetup(engine, fileloc, tmp_path / "unused.pid"), server.url


def run_try(setup: tuple[DagSetup, str], task_id: str, tmp_path: Path) -> tuple[int, str, int]:
    dag_setup, url = setup
    request = dag_setup.queue_try(task_id)
    key = request.key
    argv = [sys.executable, "-m", "ketch.worker.runner", key.dag_id, key.task_id, key.run_id]
    argv += ["--try", str(key.try_number), "--log-file", str(tmp_path / f"{task_id}.log")]
    env = {
        **os.environ,
        "KETCH_TRY_TOKEN": request.token,
        "KETCH_EXECUTION_API_URL": url,
        "KETCH_DAGS_FOLDER": str(dag_setup.fileloc.parent),
        "KETCH_API_RETRY_TIMEOUT": "10",
    }
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr, request.ti_id


def test_a_try_reads_variables(setup: tuple[DagSetup, str], tmp_path: Path) -> None:
    code, output, ti_id = run_try(setup, "read_vars", tmp_path)
    assert code == 0, output
    assert setup[0].ti(ti_id).state == "success"
    assert setup[0].xcom("read_vars") == {
        "parse_time": "s3://data",
        "bucket": "s3://data",
        "cfg": {"tables": ["a", "b"]},
        "default": "fallback",
        "token": "tok-123456",
        # Only the sensitive value is registered for log masking.
        "masked": ["tok-123456"],
    }


def test_a_missing_variable_fails_the_try_with_its_name(
    setup: tuple[DagSetup, str], tmp_path: Path
) -> None:
    code, output, ti_id = run_try(setup, "read_missing", tmp_path)
    assert code == 1
    ti = setup[0].ti(ti_id)
    assert ti.state == "failed" and "missing" in (ti.error or "") + output


def test_a_try_reads_a_connection(setup: tuple[DagSetup, str], tmp_path: Path) -> None:
    code, output, _ = run_try(setup, "read_conn", tmp_path)
    assert code == 0, output
    assert setup[0].xcom("read_conn") == {
        "host": "db.internal",
        "port": 5432,
        "login": "etl",
        "extra": {"sslmode": "require"},
        "uri": "postgres://etl:pa%24%24word@db.internal:5432/wh?sslmode=require",
        "password_masked": True,
    }


def test_outside_a_try_variable_get_returns_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # The DAG processor parses files without a try token: no database, no API.
    from ketch import Variable

    monkeypatch.delenv("KETCH_TRY_TOKEN", raising=False)
    assert Variable.get("anything", default="d") == "d"
    assert Variable.get("anything", default_var=None) is None
    with pytest.raises(KeyError, match="anything"):
        Variable.get("anything")
