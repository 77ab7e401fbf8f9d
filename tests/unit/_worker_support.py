"""Shared by the runner and local executor tests: a real execution API over loopback,
a small DAG file, and the database rows of a queued try."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.api.execution import router
from ketch.auth.try_tokens import sign_try_token
from ketch.config import get_settings
from ketch.db.models import DagModel, DagRun, DagVersion, TaskInstance, TaskInstanceTry, XCom
from ketch.executors.base import LaunchRequest, TryKey
from ketch.serialization import SerializedDag, SerializedSchedule, SerializedTask

DAG_ID = "worker_test"
RUN_ID = "manual__2026-03-01T00:00:00+00:00"

DAG_FILE = """
import sys
import time
from datetime import datetime, timedelta

from ketch import BashTask, FailTask, SkipTask, dag, task

PIDFILE = {pidfile!r}


@dag(dag_id="worker_test", schedule=None, start_date=datetime(2026, 1, 1))
def worker_test():
    @task
    def produce():
        print("producing")
        return {{"n": 41}}

    @task
    def consume(value):
        return value["n"] + 1

    @task
    def boom():
        raise ValueError("boom")

    @task
    def give_set():
        return {{1, object()}}  # a set is stored (tagged); an object in it is not

    @task
    def fail_hard():
        raise FailTask("no retry for this")

    @task
    def skip():
        raise SkipTask("nothing to do")

    @task
    def modules():
        heavy = {{"sqlalchemy", "fastapi", "uvicorn", "alembic", "starlette"}}
        return sorted(
            m for m in sys.modules
            if m.split(".")[0] in heavy or m.startswith(("ketch.db", "ketch.api"))
        )

    @task
    def nap():
        time.sleep(1.5)
        return "rested"

    BashTask(task_id="bash", bash_command="echo hello from bash; echo $KETCH_CTX_TASK_ID")
    BashTask(
        task_id="slow",
        bash_command=f"sleep 60 & echo $! > {{PIDFILE}}; wait",
        execution_timeout=timedelta(seconds=1),
    )
    BashTask(task_id="hang", bash_command=f"sleep 60 & echo $! > {{PIDFILE}}; wait")
    consume(produce())
    boom()
    give_set()
    fail_hard()
    skip()
    modules()
    nap()


worker_test()
"""

TASKS = [
    "produce",
    "consume",
    "boom",
    "give_set",
    "fail_hard",
    "skip",
    "modules",
    "nap",
    "bash",
    "slow",
    "hang",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiServer:
    """The execution API served by uvicorn in a thread; stoppable and restartable on its port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/execution"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        app = FastAPI()
        app.include_router(router)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None


def add_dag_and_run(
    session: Session, dag: SerializedDag, run_id: str, now: datetime, params: dict | None = None
) -> None:
    """Rows for ``dag`` (model + version, hash "h") and one running manual run of it."""
    data = dag.model_dump(mode="json")
    session.add(
        DagModel(
            dag_id=dag.dag_id,
            fileloc=dag.fileloc,
            relative_fileloc=dag.relative_fileloc,
            serialized=data,
            serialized_hash="h",
        )
    )
    session.add(DagVersion(dag_hash="h", dag_id=dag.dag_id, serialized=data, created_at=now))
    session.add(
        DagRun(
            dag_id=dag.dag_id,
            run_id=run_id,
            run_type="manual",
            state="running",
            logical_date=now,
            run_after=now,
            dag_hash="h",
            params=params or {},
        )
    )


@pytest.fixture
def api_server(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    """A real execution API over loopback on a free port (heartbeats every 0.2 s)."""
    server = ApiServer(free_port())
    monkeypatch.setenv("KETCH__CORE__EXECUTION_API_SERVER_URL", server.url)
    monkeypatch.setenv("KETCH__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC", "0.2")
    get_settings.cache_clear()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api_url(api_server: ApiServer) -> str:
    return api_server.url


@dataclass
class DagSetup:
    engine: Engine
    fileloc: Path
    pidfile: Path

    def queue_try(
        self, task_id: str, *, max_tries: int = 0, execution_timeout: float | None = None
    ) -> LaunchRequest:
        """Insert the TI as queued with try 1 and return the executor's launch request."""
        with Session(self.engine) as session:
            run = session.scalars(select(DagRun).where(DagRun.run_id == RUN_ID)).one()
            ti = TaskInstance(
                dag_run_id=run.id,
                dag_id=DAG_ID,
                run_id=RUN_ID,
                task_id=task_id,
                state="queued",
                try_number=1,
                max_tries=max_tries,
            )
            session.add(ti)
            session.flush()
            session.add(TaskInstanceTry(task_instance_id=ti.id, try_number=1, state="queued"))
            session.commit()
            ti_id = ti.id
        key = TryKey(DAG_ID, RUN_ID, task_id, 1)
        return LaunchRequest(
            key=key,
            ti_id=ti_id,
            token=sign_try_token(get_settings(), key, ti_id),
            relative_fileloc=self.fileloc.name,
            fileloc=str(self.fileloc),
            execution_timeout=execution_timeout,
        )

    def ti(self, ti_id: int) -> TaskInstance:
        with Session(self.engine) as session:
            ti = session.get(TaskInstance, ti_id)
            assert ti is not None
            return ti

    def xcom(self, task_id: str, key: str = "return_value") -> object:
        with Session(self.engine) as session:
            return session.scalars(
                select(XCom.value).where(XCom.task_id == task_id, XCom.key == key)
            ).first()


@pytest.fixture
def dag_setup(sqlite_engine: Engine, tmp_path: Path) -> DagSetup:
    """A DAG file in tmp_path and its dag, dag_version and run rows."""
    folder = tmp_path / "dags"
    folder.mkdir()
    pidfile = tmp_path / "child.pid"
    fileloc = folder / "worker_test.py"
    fileloc.write_text(DAG_FILE.format(pidfile=str(pidfile)))
    timeouts = {"slow": 1.0}
    dag = SerializedDag(
        dag_id=DAG_ID,
        fileloc=str(fileloc),
        relative_fileloc=fileloc.name,
        schedule=SerializedSchedule(kind="none"),
        tasks={
            t: SerializedTask(
                task_id=t,
                kind="bash" if t in ("bash", "slow", "hang") else "python",
                execution_timeout=timeouts.get(t),
            )
            for t in TASKS
        },
    )
    now = datetime.now(UTC)
    with Session(sqlite_engine) as session:
        add_dag_and_run(session, dag, RUN_ID, now, params={"p": 1})
        session.commit()
    return DagSetup(sqlite_engine, fileloc, pidfile)
