"""Failover time of the standby scheduler: ``python -m benchmarks.failover [--kills 20]
[--sigstops 5] [--sigterms 5]``.

Two ``ketch scheduler`` processes and a ``ketch web`` on a throwaway PostgreSQL, with the
DEFAULT lease settings (``[scheduler] lease_ttl`` 6 s, ``lease_renew_interval`` 1.5 s,
``standby_poll_interval`` 1 s). A DAG of short tasks runs continuously (a new run is
triggered whenever fewer than two are active, each run 60 tasks of ~50 ms, eight at a
time). Then, ``--kills`` times: ``kill -9`` the active scheduler at a random moment,
measure, start a new standby in its place. ``--sigstops`` times: SIGSTOP the active one
(a frozen process keeps its connections: the lease must expire), measure, SIGCONT it
and wait until it has stepped down to standby. ``--sigterms`` times: SIGTERM the active
one (a rollout or a drain: it releases the lease), measure, start a new standby.

Figures (median and max, printed and written to benchmarks/results/failover.json):

- takeover_s: from the signal to the standby holding the lease (``acquired_at``, the
  database clock, same host);
- first_queued_s: from the signal to the first try the new leader queued;
- first_start_s: from the signal to the first try the new leader queued starting
  (``task_instance_try.start_date``): adoption, executor start and the first launch
  included. Tries already running keep running and are adopted;
- duplicates: tries whose code ran twice (any try_number > 1: the tasks never retry).

These are measurements, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from tests.support.ketch_process import Api, KetchEnv, KetchProcess, wait_for
from tests.support.postgres import start_postgres

RESULTS = Path(__file__).parent / "results"
DAG_ID = "failover_stream"
STREAM_DAG = f'''
import time
from datetime import datetime, timezone

from ketch import dag, task


@task
def short() -> None:
    time.sleep(0.05)


@dag(dag_id="{DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     is_paused_upon_creation=False, max_active_tasks=8, max_active_runs=4)
def stream():
    for i in range(60):
        short.override(task_id=f"t{{i:02d}}")()


stream()
'''


class Stand:
    """The web server, two schedulers and a trigger thread keeping work in flight."""

    def __init__(self, env: KetchEnv) -> None:
        self.env = env
        self.api = Api(env.base_url)
        self.schedulers: list[KetchProcess] = []
        self.web = KetchProcess(env, "web").start()
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, daemon=True)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.env.db_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return list(cursor.fetchall()) if cursor.description else []

    def lease(self) -> tuple[str, int, datetime] | None:
        rows = self.sql("SELECT holder, fencing_token, acquired_at FROM scheduler_lease")
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def leader(self) -> KetchProcess | None:
        lease = self.lease()
        if lease is None:
            return None
        pid = int(lease[0].split(":")[-2])
        return next((p for p in self.schedulers if p.proc and p.proc.pid == pid), None)

    def start_scheduler(self) -> KetchProcess:
        process = KetchProcess(self.env, "scheduler", name=f"scheduler{len(self.schedulers)}")
        self.schedulers.append(process.start())
        return process

    def start(self) -> None:
        wait_for(self.api.healthy, 60, 0.05, "web server")
        first = self.start_scheduler()
        wait_for(lambda: self.leader() is first, 60, 0.05, "a leader")
        self.wait_standby(self.start_scheduler())
        wait_for(lambda: self.api.dag(DAG_ID), 60, 0.05, "the DAG parsed")
        self._feeder.start()

    def wait_standby(self, process: KetchProcess, times: int = 1) -> None:
        wait_for(
            lambda: process.output().count("standby: scheduler") >= times,
            60,
            0.05,
            f"{process.name} in standby",
        )

    def _feed(self) -> None:
        while not self._stop.wait(0.2):
            try:
                active = self.sql(
                    "SELECT count(*) FROM dag_run WHERE dag_id = %s AND state IN "
                    "('queued', 'running')",
                    DAG_ID,
                )[0][0]
                if active < 2:
                    self.api.trigger(DAG_ID)
            except Exception as exc:  # the web server is fine; keep feeding
                print(f"feeder: {exc}", flush=True)

    def first_try_after(
        self, acquired_at: datetime, timeout: float = 60
    ) -> tuple[datetime, datetime]:
        """(queued_at, start_date) of the first try the new leader queued that started."""

        def started() -> tuple[datetime, datetime] | None:
            rows = self.sql(
                "SELECT queued_at, start_date FROM task_instance_try "
                "WHERE queued_at >= %s AND start_date IS NOT NULL ORDER BY start_date LIMIT 1",
                acquired_at,
            )
            return (rows[0][0], rows[0][1]) if rows else None

        found: tuple[datetime, datetime] = wait_for(
            started, timeout, 0.01, "the new leader's first task start"
        )
        return found

    def stop(self) -> None:
        self._stop.set()
        for process in [*self.schedulers, self.web]:
            if process.alive() and process.proc is not None:
                process.proc.send_signal(signal.SIGCONT)
            process.stop()


def one_failover(stand: Stand, how: str) -> dict[str, float]:
    old = stand.leader()
    before = stand.lease()
    assert old is not None and old.proc is not None and before is not None
    others = [p for p in stand.schedulers if p.alive() and p is not old]
    time.sleep(random.uniform(0.5, 2.0))  # land anywhere in the loop's cycle
    signalled = datetime.now(UTC)
    os.kill(old.proc.pid, {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}.get(how, signal.SIGTERM))
    if how == "kill":
        old.proc.wait(10)
    lease = wait_for(
        lambda: (lease := stand.lease()) is not None and lease[1] > before[1] and lease,
        60,
        0.005,
        "a takeover",
    )
    queued, started = stand.first_try_after(lease[2])
    figures = {
        "takeover_s": (lease[2] - signalled).total_seconds(),
        "first_queued_s": (queued - signalled).total_seconds(),
        "first_start_s": (started - signalled).total_seconds(),
    }
    if how in ("kill", "term"):
        old.proc.wait(30)
        stand.wait_standby(stand.start_scheduler())
    else:
        steps_down = old.output().count("standby: scheduler") + 1
        old.proc.send_signal(signal.SIGCONT)
        stand.wait_standby(old, steps_down)
    assert stand.leader() in others
    return figures


def summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(samples)}
    for key in ("takeover_s", "first_queued_s", "first_start_s"):
        values = [s[key] for s in samples]
        if values:
            out[key] = {
                "median": round(statistics.median(values), 3),
                "max": round(max(values), 3),
                "min": round(min(values), 3),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--sigstops", type=int, default=5)
    parser.add_argument("--sigterms", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="ketch-failover-"))
    server = start_postgres()
    stand: Stand | None = None
    try:
        dags = tmp / "dags"
        dags.mkdir()
        (dags / "stream.py").write_text(STREAM_DAG)
        env = KetchEnv(
            home=tmp / "home", db_url=server.create_database("failover"), dags_folder=dags
        )
        stand = Stand(env)
        stand.start()
        kills = []
        for i in range(args.kills):
            kills.append(one_failover(stand, "kill"))
            print(f"kill -9 #{i + 1}: {json.dumps(kills[-1])}", flush=True)
        stops = []
        for i in range(args.sigstops):
            stops.append(one_failover(stand, "stop"))
            print(f"SIGSTOP #{i + 1}: {json.dumps(stops[-1])}", flush=True)
        terms = []
        for i in range(args.sigterms):
            terms.append(one_failover(stand, "term"))
            print(f"SIGTERM #{i + 1}: {json.dumps(terms[-1])}", flush=True)
        duplicates = stand.sql("SELECT count(*) FROM task_instance WHERE try_number > 1")[0][0]
        results = {
            "lease_settings": "defaults (lease_ttl 6 s, renew 1.5 s, standby poll 1 s)",
            "kill_9": summary(kills),
            "sigstop": summary(stops),
            "sigterm": summary(terms),
            "task_instances": stand.sql("SELECT count(*) FROM task_instance")[0][0],
            "duplicates": duplicates,
        }
    except BaseException:
        if stand is not None:
            for process in [stand.web, *stand.schedulers]:
                print(f"--- {process.name} ---\n{process.output()[-4000:]}")
        raise
    finally:
        if stand is not None:
            stand.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "failover.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
