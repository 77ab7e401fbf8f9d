"""Recovery after a crash: `python -m benchmarks.recovery [--backend sqlite|postgresql|both]`.

Figures (measurements, never assertions):

- kill_restart: `ketch standalone` runs `chains_10x20` (200 naps of 1 s); it is killed
  with SIGKILL at a random instant and restarted at once, ``--kills`` times. For each
  restart: seconds from starting the new process to the first task try it starts (a try
  whose start_date is after the restart). The run must still finish with all 200 tasks
  successful and each try started exactly once (checked from the try history).
- safety_pass: the cost of the periodic safety pass (ends recorded in the database that
  no event brought) with 10,000 task instances in the database: milliseconds per pass
  measured in-process, and the CPU an idle `ketch scheduler` uses per minute with those
  10,000 task instances present.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import psutil
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from tests.support.ketch_process import Api, KetchProcess, wait_for

from benchmarks.run import RESULTS, Bench, database


def _engine(url: str) -> Any:
    from ketch.db.engine import make_engine

    return make_engine(url)


def bench_kill_restart(bench: Bench, kills: int, seed: int) -> dict[str, float]:
    from ketch.db.models import TaskInstance, TaskInstanceTry

    rng = random.Random(seed)
    env = bench.env(
        {
            "KETCH__CORE__PARALLELISM": "64",
            "KETCH_BENCH_SCALE_TASKS": "10",
            "KETCH_BENCH_NAP_SECONDS": "1.0",  # long enough a run for every kill to land
        }
    )
    api = Api(env.base_url)
    proc = KetchProcess(env, "standalone", name="standalone-0").start()
    wait_for(api.healthy, 60, 0.01, "web up")
    wait_for(lambda: api.dag("chains_10x20"), 60, 0.05, "chains_10x20 parsed")
    run = api.trigger("chains_10x20")
    engine = _engine(env.db_url)
    recoveries: list[float] = []
    try:
        for n in range(kills):
            time.sleep(rng.uniform(0.5, 2.5))
            wait_for(api.healthy, 60, 0.01, "web up")
            if not _tasks_left_to_start(api, run["dag_run_id"]):
                break  # a restart now would have nothing new to start
            proc.kill9()
            restarted_at = datetime.now(UTC)
            t0 = time.monotonic()
            proc = KetchProcess(env, "standalone", name=f"standalone-{n + 1}").start()

            wait_for(
                lambda since=restarted_at: _tries_started_after(engine, since),
                120,
                0.005,
                "a try started after the restart",
            )
            recoveries.append(time.monotonic() - t0)
        wait_for(api.healthy, 60, 0.05, "web up")
        final = api.wait_run_finished("chains_10x20", run["dag_run_id"], 600)
        with Session(engine) as session:
            states = dict(
                session.execute(
                    select(TaskInstance.state, func.count(TaskInstance.id)).group_by(
                        TaskInstance.state
                    )
                ).all()
            )
            tries = session.scalar(select(func.count(TaskInstanceTry.id)))
    finally:
        proc.stop()
        engine.dispose()
    return {
        "kills": float(len(recoveries)),
        "run_success": float(final["state"] == "success"),
        "tasks_success": float(states.get("success", 0)),
        "tries_total": float(tries or 0),
        "restart_to_first_start_median_s": round(statistics.median(recoveries), 3),
        "restart_to_first_start_max_s": round(max(recoveries), 3),
    }


def _tries_started_after(engine: Any, since: datetime) -> bool:
    from ketch.db.models import TaskInstanceTry

    with Session(engine) as session:
        started = session.scalar(
            select(func.count(TaskInstanceTry.id)).where(TaskInstanceTry.start_date > since)
        )
    return bool(started)


def _tasks_left_to_start(api: Api, run_id: str) -> bool:
    """More than a chain's worth of tasks still to start (so the next one is not the
    downstream of a try that is about to end anyway)."""
    tis = api.task_instances("chains_10x20", run_id).values()
    return sum(ti["state"] in (None, "scheduled") for ti in tis) > 20


def bench_safety_pass(bench: Bench, tis: int, idle_seconds: float) -> dict[str, float]:
    from tests.support.fake_executor import FakeExecutor, insert_dag, serialized_dag, trigger

    from ketch.config import get_settings
    from ketch.db.migrate import migrate
    from ketch.db.models import DagRun, TaskInstance
    from ketch.scheduler.context import SchedulerContext
    from ketch.scheduler.reactions import process_events

    env = bench.env({"KETCH_BENCH_SCALE_TASKS": "10"})
    engine = _engine(env.db_url)
    migrate(engine)
    tasks = {f"t{i:05d}": {} for i in range(tis)}
    insert_dag(engine, serialized_dag("ten_k", tasks))
    run_pk = trigger(engine, "ten_k", "r")
    with Session(engine) as session:  # a finished run: 10,000 TIs, nothing owed
        session.execute(
            update(TaskInstance).values(state="success", try_number=1, needs_reaction=False)
        )
        session.execute(update(DagRun).where(DagRun.id == run_pk).values(state="success"))
        session.commit()
    ctx = SchedulerContext(
        settings=get_settings(),
        engine=engine,
        executor=FakeExecutor(engine),
        sign_token=lambda k, i: "t",
    )
    passes = 500
    cpu0 = time.process_time()
    for _ in range(passes):
        with ctx.sessions() as session:
            process_events(ctx, session, [])
            session.commit()
    per_pass_ms = (time.process_time() - cpu0) * 1000 / passes
    engine.dispose()
    scheduler = KetchProcess(env, "scheduler").start()
    try:
        time.sleep(10)  # start-up: parse the example-free DAGs folder, adopt, evaluate
        assert scheduler.proc is not None
        sched = psutil.Process(scheduler.proc.pid)
        before = sched.cpu_times()
        time.sleep(idle_seconds)
        after = sched.cpu_times()
    finally:
        scheduler.stop()
    cpu = (after.user - before.user) + (after.system - before.system)
    return {
        "task_instances": float(tis),
        "safety_pass_cpu_ms": round(per_pass_ms, 3),
        "idle_scheduler_cpu_s_per_min": round(cpu * 60 / idle_seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tis", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--only", action="append", help="kill_restart, safety_pass")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    selected = set(args.only or ["kill_restart", "safety_pass"])
    results: dict[str, dict[str, Any]] = {}
    for backend in backends:
        with database(backend) as db_base:
            bench = Bench(backend, db_base)
            try:
                if "kill_restart" in selected:
                    results[f"{backend}/kill_restart"] = bench_kill_restart(
                        bench, args.kills, args.seed
                    )
                    print(backend, "kill_restart", results[f"{backend}/kill_restart"], flush=True)
                if "safety_pass" in selected:
                    results[f"{backend}/safety_pass"] = bench_safety_pass(
                        bench, args.tis, args.idle_seconds
                    )
                    print(backend, "safety_pass", results[f"{backend}/safety_pass"], flush=True)
            finally:
                bench.cleanup()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recovery.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
