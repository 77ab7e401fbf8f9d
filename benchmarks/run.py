"""ketch's benchmarks: `make bench` (or `python -m benchmarks.run [--backend sqlite|postgresql] [--only NAME]`).

Figures (printed as a table and written to benchmarks/results/latest.json):

- startup_s: from launching `ketch standalone` to the first DAG being schedulable
  (listed by the API, active and unpaused);
- idle_pss_mb: memory of `ketch standalone` and all its child processes at idle (PSS);
- chain_20: median gap between one task's end and the next one's start, and the
  median duration of a no-op try from process start (fork) to exit;
- fanout_200: 200 parallel no-op tasks then a join, tasks per second end to end;
- mapped_1000: a producer, a 1,000-way mapped no-op task over its value and a reduce,
  tasks per second end to end, next to fanout_1000 (1,000 plain no-op tasks and a join)
  and fanout_1000_args (the same DAG without mapping: 1,000 plain tasks each taking the
  producer's value, and the reduce) for comparison;
- scale_10k: one run of 10,000 no-op tasks, with the scheduler and web in separate
  processes: scheduler CPU seconds per task instance.

These are measurements, never assertions: the tests do not time anything.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from tests.support.ketch_process import Api, KetchEnv, KetchProcess, wait_for

BENCH_DAGS = Path(__file__).parent / "dags"
RESULTS = Path(__file__).parent / "results"


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


@contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh database URL on the chosen backend (PostgreSQL: a throwaway server)."""
    if backend == "sqlite":
        yield ""  # filled per environment: SQLite under its KETCH_HOME
        return
    from tests.support.postgres import start_postgres

    server = start_postgres()
    try:
        yield server.admin_url.rsplit("/", 1)[0]
    finally:
        server.stop()


class Bench:
    def __init__(self, backend: str, db_base: str) -> None:
        self.backend = backend
        self.db_base = db_base
        self.counter = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="ketch-bench-"))

    def env(self, extra: dict[str, str] | None = None) -> KetchEnv:
        self.counter += 1
        home = self.tmp / f"home{self.counter}"
        home.mkdir()
        if self.backend == "sqlite":
            url = f"sqlite:///{home / 'ketch.db'}"
        else:
            import psycopg

            name = f"bench{self.counter}"
            with psycopg.connect(f"{self.db_base}/postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
            url = f"{self.db_base}/{name}"
        return KetchEnv(home=home, db_url=url, dags_folder=BENCH_DAGS, extra=extra or {})

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def tree_pss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_full_info().pss
    return total / 2**20


TRY_END_LINE = re.compile(r"process lived ([0-9.]+) ms")


def try_process_durations_ms(env: KetchEnv, dag_id: str, run_id: str) -> list[float]:
    """Each try's own duration, fork to exit, as the runner prints it in its log's last line."""
    folder = env.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    found = []
    for log in folder.glob("task_id=*/attempt=*.log"):
        match = TRY_END_LINE.search(log.read_text(errors="replace"))
        if match:
            found.append(float(match.group(1)))
    return found


def run_and_wait(
    api: Api, dag_id: str, timeout: float
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    wait_for(lambda: api.dag(dag_id), 30, 0.01, f"{dag_id} parsed")
    run = api.trigger(dag_id)
    run = api.wait_run_finished(dag_id, run["dag_run_id"], timeout)
    return run, api.task_instances(dag_id, run["dag_run_id"])


def bench_startup_and_memory(bench: Bench) -> dict[str, float]:
    env = bench.env({"KETCH_BENCH_SCALE_TASKS": "10"})
    api = Api(env.base_url)
    t0 = time.monotonic()
    proc = KetchProcess(env, "standalone").start()
    try:

        def schedulable() -> bool:
            dag = api.dag("chain_20") if api.healthy() else None
            return bool(dag and dag.get("is_active", True) and not dag.get("is_paused"))

        wait_for(schedulable, 60, 0.005, "first DAG schedulable")
        startup = time.monotonic() - t0
        time.sleep(5)  # settle: parsing done, idle loop
        assert proc.proc is not None
        pss = tree_pss_mb(proc.proc.pid)
    finally:
        proc.stop()
    return {"startup_s": round(startup, 3), "idle_pss_mb": round(pss, 1)}


def bench_chain_20(bench: Bench) -> dict[str, float]:
    env = bench.env({"KETCH_BENCH_SCALE_TASKS": "10"})
    api = Api(env.base_url)
    proc = KetchProcess(env, "standalone").start()
    try:
        wait_for(api.healthy, 60, 0.01, "web up")
        t0 = time.monotonic()
        run, tis = run_and_wait(api, "chain_20", 120)
        wall = time.monotonic() - t0
    finally:
        proc.stop()
    ordered = [tis[f"t{i:02d}"] for i in range(20)]
    gaps = [
        (_ts(b["start_date"]) - _ts(a["end_date"])).total_seconds()
        for a, b in itertools.pairwise(ordered)
    ]
    durations = [ti["duration"] for ti in ordered if ti.get("duration") is not None]
    process_ms = try_process_durations_ms(env, "chain_20", run["dag_run_id"])
    return {
        "state_success": float(run["state"] == "success"),
        "wall_s": round(wall, 3),
        "median_gap_ms": round(statistics.median(gaps) * 1000, 1),
        "max_gap_ms": round(max(gaps) * 1000, 1),
        "median_task_running_ms": round(statistics.median(durations) * 1000, 1),
        "median_try_process_ms": round(statistics.median(process_ms), 1) if process_ms else -1,
    }


def bench_fanout_200(bench: Bench) -> dict[str, float]:
    env = bench.env({"KETCH_BENCH_SCALE_TASKS": "10", "KETCH__CORE__PARALLELISM": "64"})
    api = Api(env.base_url)
    proc = KetchProcess(env, "standalone").start()
    try:
        wait_for(api.healthy, 60, 0.01, "web up")
        run, tis = run_and_wait(api, "fanout_200", 300)
    finally:
        proc.stop()
    starts = [_ts(t["start_date"]) for t in tis.values() if t.get("start_date")]
    ends = [_ts(t["end_date"]) for t in tis.values() if t.get("end_date")]
    span = (max(ends) - _ts(run["start_date"])).total_seconds()
    first_to_last = (max(ends) - min(starts)).total_seconds()
    return {
        "state_success": float(run["state"] == "success"),
        "tasks": float(len(tis)),
        "tasks_per_s_run": round(len(tis) / span, 1),
        "tasks_per_s_first_start_to_last_end": round(len(tis) / first_to_last, 1),
    }


def _all_task_instances(api: Api, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Every task instance of the run, a mapped task's instances included."""
    path = f"/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    return list(api.http.get(path, timeout=120).json()["task_instances"])


def bench_wide(bench: Bench, dag_id: str) -> dict[str, float]:
    """Tasks per second end to end for fanout_1000 or mapped_1000 (same settings)."""
    env = bench.env({"KETCH_BENCH_SCALE_TASKS": "10", "KETCH__CORE__PARALLELISM": "64"})
    api = Api(env.base_url)
    proc = KetchProcess(env, "standalone").start()
    try:
        wait_for(api.healthy, 60, 0.01, "web up")
        run, _ = run_and_wait(api, dag_id, 900)
        tis = _all_task_instances(api, dag_id, run["dag_run_id"])
    finally:
        proc.stop()
    starts = [_ts(t["start_date"]) for t in tis if t.get("start_date")]
    ends = [_ts(t["end_date"]) for t in tis if t.get("end_date")]
    span = (max(ends) - _ts(run["start_date"])).total_seconds()
    first_to_last = (max(ends) - min(starts)).total_seconds()
    return {
        "state_success": float(run["state"] == "success"),
        "tasks": float(len(tis)),
        "tasks_per_s_run": round(len(tis) / span, 1),
        "tasks_per_s_first_start_to_last_end": round(len(tis) / first_to_last, 1),
    }


def bench_scale_10k(bench: Bench, tasks: int) -> dict[str, float]:
    env = bench.env({"KETCH_BENCH_SCALE_TASKS": str(tasks), "KETCH__CORE__PARALLELISM": "64"})
    api = Api(env.base_url)
    web = KetchProcess(env, "web").start()
    wait_for(api.healthy, 60, 0.01, "web up")
    scheduler = KetchProcess(env, "scheduler").start()
    try:
        wait_for(lambda: api.dag("scale_10k"), 120, 0.05, "scale_10k parsed")
        assert scheduler.proc is not None
        sched = psutil.Process(scheduler.proc.pid)
        cpu0 = sched.cpu_times()
        t0 = time.monotonic()
        run = api.trigger("scale_10k")
        run = api.wait_run_finished("scale_10k", run["dag_run_id"], 3600)
        wall = time.monotonic() - t0
        cpu1 = sched.cpu_times()
    finally:
        scheduler.stop()
        web.stop()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "state_success": float(run["state"] == "success"),
        "tasks": float(tasks),
        "wall_s": round(wall, 1),
        "scheduler_cpu_s": round(cpu, 2),
        "scheduler_cpu_ms_per_ti": round(cpu * 1000 / tasks, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--only",
        action="append",
        help="startup, chain_20, fanout_200, mapped_1000 (with fanout_1000), scale_10k",
    )
    parser.add_argument("--scale-tasks", type=int, default=10_000)
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    selected = set(args.only or ["startup", "chain_20", "fanout_200", "mapped_1000", "scale_10k"])
    results: dict[str, dict[str, Any]] = {}
    for backend in backends:
        with database(backend) as db_base:
            bench = Bench(backend, db_base)
            try:
                if "startup" in selected:
                    results[f"{backend}/startup"] = bench_startup_and_memory(bench)
                if "chain_20" in selected:
                    results[f"{backend}/chain_20"] = bench_chain_20(bench)
                if "fanout_200" in selected:
                    results[f"{backend}/fanout_200"] = bench_fanout_200(bench)
                if "mapped_1000" in selected:
                    for dag_id in ("fanout_1000", "fanout_1000_args", "mapped_1000"):
                        results[f"{backend}/{dag_id}"] = bench_wide(bench, dag_id)
                if "scale_10k" in selected:
                    results[f"{backend}/scale_10k"] = bench_scale_10k(bench, args.scale_tasks)
            finally:
                bench.cleanup()
        for name, figures in results.items():
            if name.startswith(backend):
                print(name, json.dumps(figures), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
