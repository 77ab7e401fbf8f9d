"""Server time of the UI's pages: ``python -m benchmarks.web_ui [--backend postgresql]
[--dags 200 --runs 100 --tasks 20] [--requests 300]``.

Seeds one database with DAGS DAGs x RUNS runs x TASKS task instances (each with a try
row), serves the app with uvicorn on loopback, signs in as a viewer with a session
cookie, and times sequential GETs (after a warm-up) of: the DAGs list (first page),
a DAG's page with its grid (25 runs), the grid's live poll when nothing changed (a 204),
a run page and a task-try page. Prints p50/p99 per page and what a grid left open
costs: its polls per minute (live and idle) times the measured 204.

Issue 11's target: p99 <= 100 ms on loopback, on PostgreSQL, with 200 x 100 x 20.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from benchmarks.auth_cost import RESULTS, _cookie, _pct, _settings, serve

GRID_POLLS_PER_MINUTE = {"live": 60 / 2, "idle": 60 / 10}  # ketch.web.grid LIVE/IDLE_POLL
STATES = ("success", "success", "success", "failed", "skipped")


def _serialized(dag_id: str, tasks: int) -> dict[str, Any]:
    from ketch.serialization import SerializedDag

    ids = [f"task_{n:02d}" for n in range(tasks)]
    data = {
        "dag_id": dag_id,
        "fileloc": f"/dags/{dag_id}.py",
        "relative_fileloc": f"{dag_id}.py",
        "schedule": {"kind": "none"},
        "tags": [f"team-{hash(dag_id) % 5}"],
        "tasks": {
            t: {
                "task_id": t,
                "kind": "python",
                "upstream_task_ids": ids[i - 1 : i] if i else [],
                "downstream_task_ids": ids[i + 1 : i + 2],
            }
            for i, t in enumerate(ids)
        },
    }
    return SerializedDag.model_validate(data).model_dump(mode="json", by_alias=True)


def seed(engine: Engine, dags: int, runs: int, tasks: int) -> None:
    """Bulk inserts, one DAG at a time (its runs, then their task instances and tries)."""
    from ketch.db.models import DagModel, DagRun, DagVersion, TaskInstance, TaskInstanceTry

    start = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        for d in range(dags):
            dag_id = f"dag_{d:03d}"
            data = _serialized(dag_id, tasks)
            digest = f"{d:064d}"
            conn.execute(
                insert(DagModel),
                [
                    {
                        "dag_id": dag_id,
                        "fileloc": data["fileloc"],
                        "relative_fileloc": data["relative_fileloc"],
                        "is_paused": d % 3 == 0,
                        "is_active": True,
                        "serialized": data,
                        "serialized_hash": digest,
                        "tags": data["tags"],
                        "schedule_summary": "None",
                        "needs_next_dagrun": False,
                    }
                ],
            )
            conn.execute(
                insert(DagVersion),
                [{"dag_hash": digest, "dag_id": dag_id, "serialized": data, "created_at": start}],
            )
            run_rows = [
                {
                    "dag_id": dag_id,
                    "run_id": f"scheduled__{(start + timedelta(hours=r)).isoformat()}",
                    "run_type": "scheduled",
                    "state": "running" if r == runs - 1 else STATES[r % 4],
                    "logical_date": start + timedelta(hours=r),
                    "run_after": start + timedelta(hours=r),
                    "start_date": start + timedelta(hours=r),
                    "dag_hash": digest,
                    "needs_evaluation": False,
                    "conf": {},
                    "params": {},
                }
                for r in range(runs)
            ]
            conn.execute(insert(DagRun), run_rows)
            run_pks = conn.execute(
                select(DagRun.id, DagRun.run_id).where(DagRun.dag_id == dag_id)
            ).all()
            ti_rows = [
                {
                    "dag_run_id": pk,
                    "dag_id": dag_id,
                    "run_id": run_id,
                    "task_id": f"task_{t:02d}",
                    "state": STATES[(pk + t) % len(STATES)],
                    "try_number": 1,
                    "max_tries": 0,
                    "start_date": start,
                    "end_date": start + timedelta(seconds=3),
                }
                for pk, run_id in run_pks
                for t in range(tasks)
            ]
            conn.execute(insert(TaskInstance), ti_rows)
            ti_pks = conn.execute(
                select(TaskInstance.id, TaskInstance.state).where(TaskInstance.dag_id == dag_id)
            ).all()
            conn.execute(
                insert(TaskInstanceTry),
                [
                    {
                        "task_instance_id": pk,
                        "try_number": 1,
                        "state": state,
                        "start_date": start,
                        "end_date": start + timedelta(seconds=3),
                    }
                    for pk, state in ti_pks
                ],
            )


def time_page(client: httpx.Client, path: str, n: int, status: int = 200) -> dict[str, Any]:
    import time

    for _ in range(min(20, n)):  # warm up
        assert client.get(path).status_code == status, path
    times = []
    size = 0
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == status, (path, response.status_code)
        size = len(response.content)
    return {
        "p50_ms": round(_pct(times, 50), 2),
        "p99_ms": round(_pct(times, 99), 2),
        "bytes": size,
    }


def run(backend: str, dags: int, runs: int, tasks: int, n: int) -> dict[str, Any]:
    import time

    from tests.support.postgres import start_postgres

    from ketch.db.engine import get_engine
    from ketch.db.migrate import migrate

    home = Path(tempfile.mkdtemp(prefix="ketch-bench-web-"))
    os.environ["KETCH_HOME"] = str(home)
    server = start_postgres() if backend == "postgresql" else None
    try:
        db_url = server.create_database("bench_web") if server else f"sqlite:///{home / 'k.db'}"
        engine = get_engine(db_url)
        migrate(engine)
        started = time.monotonic()
        seed(engine, dags, runs, tasks)
        seeded_s = round(time.monotonic() - started, 1)
        oidc = {
            "oidc_client_id": "bench",
            "oidc_client_secret": "bench",
            "oidc_issuer": "http://127.0.0.1:9/",
            "allowed_domains": ["corp.com"],
            "role_rules": [{"domain": "corp.com", "role": "viewer"}],
        }
        dag_id = f"dag_{dags // 2:03d}"
        with (
            serve(_settings(db_url, home, **oidc)) as url,
            httpx.Client(base_url=url, cookies={"ketch_session": _cookie()}) as client,
        ):
            dag_page = client.get(f"/dags/{dag_id}")
            version = re.search(r'data-version="([0-9a-f]+)"', dag_page.text)
            run_id = re.findall(r'href="/dags/[^/"]+/runs/([^/"]+)"', dag_page.text)[-1]
            pages = {
                "dags_list": ("/dags", 200),
                "dag_grid": (f"/dags/{dag_id}", 200),
                "grid_poll_unchanged": (
                    f"/dags/{dag_id}/grid?since={version.group(1) if version else ''}",
                    204,
                ),
                "run_page": (f"/dags/{dag_id}/runs/{run_id}", 200),
                "try_page": (f"/dags/{dag_id}/runs/{run_id}/tasks/task_{tasks // 2:02d}", 200),
            }
            figures = {
                name: time_page(client, path, n, code) for name, (path, code) in pages.items()
            }
        poll = figures["grid_poll_unchanged"]["p50_ms"]
        figures["open_grid_cost"] = {
            f"{mode}_requests_per_minute": per_minute
            for mode, per_minute in GRID_POLLS_PER_MINUTE.items()
        } | {
            f"{mode}_server_ms_per_minute": round(per_minute * poll, 1)
            for mode, per_minute in GRID_POLLS_PER_MINUTE.items()
        }
        engine.dispose()
        return {
            "shape": f"{dags} DAGs x {runs} runs x {tasks} tasks",
            "seed_s": seeded_s,
            **figures,
        }
    finally:
        if server:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="postgresql")
    parser.add_argument("--dags", type=int, default=200)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = {b: run(b, args.dags, args.runs, args.tasks, args.requests) for b in backends}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "web_ui.json").write_text(json.dumps(results, indent=2) + "\n")
    for backend, figures in results.items():
        print(f"{backend}: {figures['shape']} (seeded in {figures['seed_s']} s)")
        for name, fig in figures.items():
            if isinstance(fig, dict) and "p50_ms" in fig:
                print(
                    f"  {name:20} p50 {fig['p50_ms']:7.2f} ms  p99 {fig['p99_ms']:7.2f} ms"
                    f"  ({fig['bytes']} bytes)  [p99 <= 100 ms]"
                )
        print(f"  open grid: {figures['open_grid_cost']}")


if __name__ == "__main__":
    main()
