"""The execution API on its own port (``[api] execution_port``), end to end.

A real ``ketch standalone`` with the local executor serves the UI and REST API on the
main port and the execution API alone on the execution port; real task tries find
the execution port by themselves (``Settings.execution_api_url``), read a variable and
an upstream return value through it, and the run succeeds. Each port answers 404 for
the other's routes, and SIGTERM stops both servers.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.support.postgres import free_port

DAGS = """
from datetime import datetime, timezone

from ketch import Variable, dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
def two_ports():
    @task
    def read() -> str:
        return Variable.get("greeting")

    @task
    def shout(value: str) -> str:
        print(f"shouting {value.upper()}!")
        return value.upper() + "!"

    shout(read())


two_ports()
"""


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_tries_run_through_the_execution_port_and_each_port_serves_only_its_part(
    ketch_home: Path, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "two_ports.py").write_text(DAGS)
    execution_port = free_port()
    env = KetchEnv(
        home=ketch_home,
        db_url=f"sqlite:///{ketch_home / 'ketch.db'}",
        dags_folder=dags,
        extra={"KETCH__API__EXECUTION_PORT": str(execution_port)},
    )
    api = Api(env.base_url)
    execution = httpx.Client(base_url=f"http://127.0.0.1:{execution_port}", timeout=10)
    with running(env, "standalone") as process:
        wait_for(api.healthy, 60, 0.05, "web server")
        assert f"execution API on port {execution_port}" in process.output()
        created = api.http.post("/api/v1/variables", json={"key": "greeting", "value": "hi"})
        assert created.status_code == 201, created.text
        wait_for(lambda: api.dag("two_ports"), 30, 0.05, "DAG parsed")
        run_id = api.trigger("two_ports")["dag_run_id"]
        run = api.wait_run_finished("two_ports", run_id, 60)
        tis = api.task_instances("two_ports", run_id)
        assert run["state"] == "success", tis
        assert {ti["state"] for ti in tis.values()} == {"success"}
        log = api.http.get(f"/api/v1/dags/two_ports/dagRuns/{run_id}/taskInstances/shout/logs/1")
        assert log.status_code == 200, log.text
        assert "shouting HI!" in log.text  # the variable and the XCom came through
        # The main port: UI and REST, no execution API.
        assert api.http.post("/execution/try/heartbeat", json={}).status_code == 404
        assert api.http.get("/execution/variables/greeting").status_code == 404
        # The execution port: the execution API (a try token is needed), nothing else.
        assert execution.post("/execution/try/heartbeat", json={}).status_code == 401
        assert execution.get("/execution/variables/greeting").status_code == 401
        for path in ("/api/v1/dags", "/api/v1/health", "/openapi.json", "/docs", "/metrics"):
            assert execution.get(path).status_code == 404, path
        assert process.stop(30) == 0  # SIGTERM stops both servers
    assert refuses_connections(env.port) and refuses_connections(execution_port)
