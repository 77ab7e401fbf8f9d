"""A try stopped by a user, through the REST API of a running ``ketch standalone``, ends
its log with one line saying why: cleared, marked failed, its run cancelled.

The try is a task sleeping for minutes; nothing of it reads the scheduler's environment
(tries get a minimal one), its marks go to a path written into the DAG file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ketch_process import Api, KetchEnv, running, wait_for

DAG = """
import time
from datetime import datetime, timezone
from pathlib import Path

from ketch import dag, task

STARTED = Path({started!r})


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     is_paused_upon_creation=False)
def e2e_sleeper():
    @task(retries=0)
    def sleeper() -> None:
        from ketch import get_current_context

        run_id = get_current_context()["run_id"]
        (STARTED / run_id.replace(":", "_").replace("+", "_")).write_text("started")
        time.sleep(300)

    sleeper()


e2e_sleeper()
"""
DAG_ID = "e2e_sleeper"


@pytest.fixture
def standalone(ketch_home: Path, tmp_path: Path) -> Iterator[tuple[Api, KetchEnv, Path]]:
    dags = tmp_path / "dags"
    dags.mkdir()
    started = tmp_path / "started"
    started.mkdir()
    (dags / "sleeper.py").write_text(DAG.format(started=str(started)))
    env = KetchEnv(
        home=ketch_home,
        db_url=f"sqlite:///{ketch_home / 'ketch.db'}",
        dags_folder=dags,
        extra={"KETCH__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "0.5"},
    )
    api = Api(env.base_url)
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag(DAG_ID), 30, 0.05, f"{DAG_ID} parsed")
        yield api, env, started


def start_a_try(api: Api, started: Path) -> str:
    run_id = str(api.trigger(DAG_ID)["dag_run_id"])
    mark = started / run_id.replace(":", "_").replace("+", "_")
    wait_for(mark.exists, 60, 0.05, f"the try of {run_id} to start")
    return run_id


def last_line(env: KetchEnv, run_id: str) -> str:
    """The log's last line, without its timestamp, once the try has written it."""
    path = env.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    path = path / "task_id=sleeper" / "attempt=1.log"

    def said() -> str | None:
        lines = path.read_text().splitlines() if path.exists() else []
        if lines and ("try cancelled:" in lines[-1] or "try stopped:" in lines[-1]):
            return lines[-1].split("] ketch: ", 1)[1]
        return None

    line = wait_for(said, 30, 0.1, f"the last line of {path}")
    text = path.read_text()
    assert "Traceback" not in text and "TaskTerminated" not in text, text
    return str(line)


def test_each_way_a_user_stops_a_try_ends_its_log_with_one_line(
    standalone: tuple[Api, KetchEnv, Path],
) -> None:
    api, env, started = standalone
    cleared = start_a_try(api, started)
    failed = start_a_try(api, started)
    cancelled = start_a_try(api, started)
    base = f"/api/v1/dags/{DAG_ID}"

    r = api.http.post(
        f"{base}/clearTaskInstances",
        json={
            "dag_run_id": cleared,
            "task_ids": ["sleeper"],
            "dry_run": False,
            "only_failed": False,
        },
    )
    assert r.status_code == 200, r.text
    r = api.http.patch(
        f"{base}/dagRuns/{failed}/taskInstances/sleeper", json={"new_state": "failed"}
    )
    assert r.status_code == 200, r.text
    r = api.http.patch(f"{base}/dagRuns/{cancelled}", json={"state": "failed"})
    assert r.status_code == 200, r.text

    # The scheduler may already have queued the next try when the old one hears of it.
    assert last_line(env, cleared) in (
        "try cancelled: the task instance was cleared; its processes were killed",
        "try cancelled: the task instance was cleared and try 2 has replaced this one; "
        "its processes were killed",
    )
    marked = last_line(env, failed)
    assert marked == (
        "try cancelled: the task instance was set to failed (marked failed, or its run was "
        "cancelled); its processes were killed"
    )
    # Cancelling a run: the scheduler SIGTERMs the try (or its heartbeat hears it first).
    assert last_line(env, cancelled).startswith(
        "try cancelled: the task instance was set to failed (marked failed, or its run was "
        "cancelled); "
    )
