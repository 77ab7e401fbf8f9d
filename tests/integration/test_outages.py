"""Outages are quiet and short (issue 7), against real ``ketch standalone`` processes:
a full log disk fails a try saying so; a PostgreSQL restart mid-run costs one log line
per component and per side of the outage, no tracebacks, and the run still succeeds."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.support.postgres import PostgresServer

DAGS = """
import os
import time
from datetime import datetime, timedelta, timezone

from ketch import dag, task

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def outage_log_disk():
    @task(retries=1, retry_delay=timedelta(seconds=0.2))
    def chatty() -> str:
        print("a line for the log")
        return "done"

    @task(retries=0)
    def only_once() -> None:
        print("a line for the log")

    chatty()
    only_once()


@dag(schedule=None, start_date=START, is_paused_upon_creation=False, max_active_tasks=8)
def outage_slow():
    @task
    def slow(i: int) -> int:
        time.sleep(3)
        return i

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    total([slow.override(task_id=f"slow_{i}")(i) for i in range(4)])


outage_log_disk()
outage_slow()
"""

ENOSPC = "[Errno 28] No space left on device"


def make_env(ketch_home: Path, db_url: str, tmp_path: Path) -> KetchEnv:
    dags = tmp_path / "dags"
    dags.mkdir(exist_ok=True)
    (dags / "outage_dags.py").write_text(DAGS)
    return KetchEnv(
        home=ketch_home,
        db_url=db_url,
        dags_folder=dags,
        extra={
            "KETCH__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "0.5",
            "KETCH__LOGGING__BASE_LOG_FOLDER": str(tmp_path / "logs"),
        },
    )


def get_ti(api: Api, dag_id: str, run_id: str, task_id: str) -> dict:
    r = api.http.get(f"/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_log_disk_fails_the_try_saying_so(ketch_home: Path, tmp_path: Path) -> None:
    env = make_env(ketch_home, f"sqlite:///{ketch_home / 'ketch.db'}", tmp_path)
    run_id = "manual__full_log_disk"
    run_logs = tmp_path / "logs" / "dag_id=outage_log_disk" / f"run_id={run_id}"
    full = {
        run_logs / "task_id=chatty" / "attempt=1.log",  # its retry writes a normal log
        run_logs / "task_id=only_once" / "attempt=1.log",
    }
    for path in full:
        path.parent.mkdir(parents=True)
        path.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    api = Api(env.base_url)
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("outage_log_disk"), 30, 0.05, "DAG parsed")
        r = api.http.post(
            "/api/v1/dags/outage_log_disk/dagRuns", json={"conf": {}, "dag_run_id": run_id}
        )
        assert r.status_code in (200, 201), r.text
        run = api.wait_run_finished("outage_log_disk", run_id, 60)
        chatty = get_ti(api, "outage_log_disk", run_id, "chatty")
        only_once = get_ti(api, "outage_log_disk", run_id, "only_once")
    assert run["state"] == "failed"
    path = run_logs / "task_id=only_once" / "attempt=1.log"
    assert (only_once["state"], only_once["error"]) == (
        "failed",
        f"cannot write the task log: {ENOSPC} ({path})",
    )
    # Retries as usual: the first try failed for its log, the second wrote one and succeeded.
    assert chatty["state"] == "success" and chatty["try_number"] == 2
    first = next(t for t in chatty["tries"] if t["try_number"] == 1)
    assert first["error"] == (
        f"cannot write the task log: {ENOSPC} ({run_logs / 'task_id=chatty' / 'attempt=1.log'})"
    )
    assert "a line for the log" in (run_logs / "task_id=chatty" / "attempt=2.log").read_text()


def test_a_postgresql_restart_is_logged_once_without_tracebacks(
    postgres_server: PostgresServer, ketch_home: Path, tmp_path: Path
) -> None:
    server = postgres_server
    env = make_env(ketch_home, server.create_database("outage_quiet"), tmp_path)
    api = Api(env.base_url)
    with running(env, "standalone") as process:
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("outage_slow"), 30, 0.05, "DAG parsed")
        run_id = api.trigger("outage_slow")["dag_run_id"]
        wait_for(
            lambda: get_ti(api, "outage_slow", run_id, "slow_0")["state"] == "running",
            30,
            0.05,
            "tries running",
        )
        server.stop()
        time.sleep(4)  # the tries finish while the database is down: their calls get 503
        assert not api.healthy()
        server.start()
        run = api.wait_run_finished("outage_slow", run_id, 60)
        assert process.alive()
        output = process.output()
    assert run["state"] == "success"
    assert "Traceback" not in output
    warnings = re.findall(r"WARNING +(\S+): database unavailable: (.*)", output)
    assert sorted(name for name, _ in warnings) == ["ketch.api", "ketch.scheduler.loop"], output
    assert all("\n" not in why and why for _, why in warnings)
    back = re.findall(
        r"INFO +(\S+): database (?:\(scheduler lease\) )?reachable again after", output
    )
    # The scheduler says it once: from its loop, or from its lease keeper when the outage
    # outlasted the lease (a slow machine) and it stepped down and took the lease back.
    assert len(back) == len(set(back)) and "ketch.api" in back, output
    assert {"ketch.scheduler.loop", "ketch.scheduler.lease"} & set(back), output
    # The tries' 503 answers are not access-logged one by one (the REST API's still are).
    assert not re.search(r'"(POST|GET) /execution/\S* HTTP/1.1" 503', output)
    assert re.search(r'"GET /api/v1/health HTTP/1.1" 503', output)
