"""A standby scheduler that takes over: two real `ketch scheduler` processes and a `ketch web`
against one real PostgreSQL, and every way the active one can go away — kill -9, SIGSTOP
(then SIGCONT), a network partition (a TCP proxy that stops forwarding), SIGTERM.

Each scenario checks that a run in flight finishes with every task run exactly once
(each task appends a line to its marker file), and, from an audit trigger that records
the ``application_name`` of every committed write to task_instance, task_instance_try and
dag_run, that the old scheduler wrote nothing after the takeover and that the standby
wrote nothing before it. SQLite: a second scheduler exits with a one-line error.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from ketch.scheduler.lease.holder import application_name
from tests.support.ketch_process import Api, KetchEnv, KetchProcess, wait_for
from tests.support.postgres import PostgresServer
from tests.support.tcp_proxy import TcpProxy

HA_DAGS = """
import os
import time
from datetime import datetime, timezone

from ketch import dag, task

MARKS = os.environ["HA_MARKS"]
SLOW = float(os.environ.get("HA_SLOW", "3"))


def mark(name: str) -> None:
    with open(os.path.join(MARKS, name), "a") as f:
        f.write(f"{os.getpid()}\\n")


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     is_paused_upon_creation=False, max_active_tasks=16)
def ha_work():
    @task
    def slow(i: int) -> int:
        mark(f"slow_{i}")
        time.sleep(SLOW)
        return i

    @task
    def after(value: int) -> int:
        mark(f"after_{value}")
        return value

    @task
    def total(values: list[int]) -> int:
        mark("total")
        return sum(values)

    total([after.override(task_id=f"after_{i}")(slow.override(task_id=f"slow_{i}")(i))
           for i in range(4)])


ha_work()
"""

TASKS = [*(f"slow_{i}" for i in range(4)), *(f"after_{i}" for i in range(4)), "total"]

AUDIT_SQL = """
CREATE TABLE ha_audit (
    id serial PRIMARY KEY, app text, tbl text, op text, at timestamptz DEFAULT clock_timestamp()
);
CREATE FUNCTION ha_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ha_audit (app, tbl, op)
    VALUES (current_setting('application_name'), TG_TABLE_NAME, TG_OP);
    RETURN NULL;
END $$;
CREATE TRIGGER ha_audit_ti AFTER INSERT OR UPDATE OR DELETE ON task_instance
    FOR EACH ROW EXECUTE FUNCTION ha_audit_fn();
CREATE TRIGGER ha_audit_try AFTER INSERT OR UPDATE OR DELETE ON task_instance_try
    FOR EACH ROW EXECUTE FUNCTION ha_audit_fn();
CREATE TRIGGER ha_audit_run AFTER INSERT OR UPDATE OR DELETE ON dag_run
    FOR EACH ROW EXECUTE FUNCTION ha_audit_fn();
"""


@dataclass
class Lease:
    holder: str
    token: int
    acquired_at: datetime

    @property
    def pid(self) -> int:
        return int(self.holder.split(":")[-2])


class Cluster:
    """``ketch web`` + schedulers on one PostgreSQL database, and what the test reads."""

    def __init__(self, env: KetchEnv, direct_url: str) -> None:
        self.env = env
        self.direct_url = direct_url
        self.api = Api(env.base_url)
        self.marks = Path(env.extra["HA_MARKS"])
        self.processes: list[KetchProcess] = []

    def start(self, *args: str, db_url: str | None = None, name: str | None = None) -> KetchProcess:
        env = self.env
        if db_url is not None:
            env = KetchEnv(env.home, db_url, env.dags_folder, env.port, env.extra)
        process = KetchProcess(env, *args, name=name).start()
        self.processes.append(process)
        return process

    def sql(self, query: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.direct_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return list(cursor.fetchall()) if cursor.description else []

    def lease(self) -> Lease | None:
        rows = self.sql("SELECT holder, fencing_token, acquired_at FROM scheduler_lease")
        if not rows:
            return None
        holder, token, acquired_at = rows[0]
        assert isinstance(holder, str) and isinstance(token, int)
        assert isinstance(acquired_at, datetime)
        return Lease(holder, token, acquired_at)

    def leader_is(self, process: KetchProcess) -> Lease | None:
        lease = self.lease()
        return lease if lease is not None and lease.pid == pid(process) else None

    def writers(self, *, after: datetime | None = None) -> set[str]:
        """``application_name`` of every committed write (to the audited tables) after a time."""
        if after is None:
            return {str(row[0]) for row in self.sql("SELECT DISTINCT app FROM ha_audit")}
        rows = self.sql("SELECT DISTINCT app FROM ha_audit WHERE at > %s", after)
        return {str(row[0]) for row in rows}

    def marks_of(self, task_id: str) -> int:
        path = self.marks / task_id
        return len(path.read_text().split()) if path.exists() else 0

    def trigger_and_wait_running(self) -> str:
        wait_for(lambda: self.api.dag("ha_work"), 60, 0.05, "ha_work parsed")
        run_id = str(self.api.trigger("ha_work")["dag_run_id"])
        wait_for(
            lambda: all(self.marks_of(f"slow_{i}") for i in range(4)),
            30,
            0.05,
            "slow tasks running",
        )
        return run_id

    def assert_run_finished_once(self, run_id: str) -> None:
        run = self.api.wait_run_finished("ha_work", run_id, 60)
        tis = self.api.task_instances("ha_work", run_id)
        assert run["state"] == "success", tis
        for task_id in TASKS:
            assert tis[task_id]["try_number"] == 1, tis[task_id]
            assert self.marks_of(task_id) == 1, f"{task_id} ran {self.marks_of(task_id)} times"

    def stop_all(self) -> None:
        for process in self.processes:
            if process.proc is not None and process.proc.poll() is None:
                process.proc.send_signal(signal.SIGCONT)
            process.stop()
            sys.stderr.write(f"--- {process.name} ---\n{process.output()[-8000:]}\n")


def pid(process: KetchProcess) -> int:
    assert process.proc is not None
    return process.proc.pid


def signal_process(process: KetchProcess, sig: signal.Signals) -> None:
    assert process.proc is not None
    process.proc.send_signal(sig)


def app_of(process: KetchProcess, lease: Lease) -> str:
    assert lease.pid == pid(process)
    return application_name(lease.holder)


MakeCluster = Callable[[float], Cluster]


@pytest.fixture
def make_cluster(
    postgres_server: PostgresServer, ketch_home: Path, tmp_path: Path
) -> Iterator[MakeCluster]:
    """``make_cluster(lease_ttl)``: ``ketch web`` on a fresh database with the audit trigger."""
    clusters: list[Cluster] = []

    def make(lease_ttl: float) -> Cluster:
        dags = tmp_path / "dags"
        dags.mkdir(exist_ok=True)
        (dags / "ha_dags.py").write_text(HA_DAGS)
        marks = tmp_path / "marks"
        marks.mkdir(exist_ok=True)
        url = postgres_server.create_database(f"ha_{tmp_path.name[-20:]}".replace("-", "_"))
        env = KetchEnv(
            home=ketch_home,
            db_url=url,
            dags_folder=dags,
            extra={
                "HA_MARKS": str(marks),
                "KETCH__SCHEDULER__LEASE_TTL": str(lease_ttl),
                "KETCH__SCHEDULER__LEASE_RENEW_INTERVAL": str(min(0.5, lease_ttl / 4)),
                "KETCH__SCHEDULER__STANDBY_POLL_INTERVAL": "0.5",
                "KETCH__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "0.5",
            },
        )
        cluster = Cluster(env, url)
        clusters.append(cluster)
        web = cluster.start("web")
        wait_for(cluster.api.healthy, 60, 0.05, "web server")
        assert web.alive()
        cluster.sql(AUDIT_SQL)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop_all()


def start_pair(
    cluster: Cluster, first_db_url: str | None = None
) -> tuple[KetchProcess, KetchProcess]:
    """Start the first scheduler, wait until it leads, then the standby."""
    active = cluster.start("scheduler", db_url=first_db_url, name="scheduler-a")
    wait_for(lambda: cluster.leader_is(active), 60, 0.05, "the first scheduler to lead")
    standby = cluster.start("scheduler", name="scheduler-b")
    wait_for(
        lambda: "standby: scheduler" in standby.output(), 60, 0.05, "the second one in standby"
    )
    return active, standby


def test_kill_9_of_the_active_scheduler_the_standby_finishes_the_run(
    make_cluster: MakeCluster,
) -> None:
    # A 30 s lease: a takeover within 10 s can only come from the dead-holder fast path.
    cluster = make_cluster(30)
    active, standby = start_pair(cluster)
    run_id = cluster.trigger_and_wait_running()
    first = cluster.leader_is(active)
    assert first is not None
    # Exactly one active: the standby has written nothing at all.
    scheduler_writers = {w for w in cluster.writers() if w.startswith("ketch-scheduler/")}
    assert scheduler_writers == {app_of(active, first)}
    killed = time.monotonic()
    active.kill9()
    second = wait_for(lambda: cluster.leader_is(standby), 10, 0.02, "the standby to take over")
    print(f"kill -9 -> takeover in {time.monotonic() - killed:.2f} s", file=sys.stderr)
    assert second.token == first.token + 1
    cluster.assert_run_finished_once(run_id)
    assert "acquired the scheduler lease" in standby.output()


def test_sigstop_the_old_scheduler_resumes_and_writes_nothing(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(2)
    active, standby = start_pair(cluster)
    run_id = cluster.trigger_and_wait_running()
    first = cluster.leader_is(active)
    assert first is not None
    signal_process(active, signal.SIGSTOP)
    try:
        second = wait_for(lambda: cluster.leader_is(standby), 10, 0.02, "takeover after SIGSTOP")
        cluster.assert_run_finished_once(run_id)
    finally:
        signal_process(active, signal.SIGCONT)
    wait_for(
        lambda: "lost the scheduler lease" in active.output(), 15, 0.05, "the old one to notice"
    )
    wait_for(
        lambda: active.output().count("standby: scheduler") >= 1, 15, 0.05, "the old one in standby"
    )
    # One more run after the old scheduler resumed: still exactly once, still no old writes.
    for path in cluster.marks.iterdir():
        path.unlink()
    run_id = cluster.trigger_and_wait_running()
    cluster.assert_run_finished_once(run_id)
    assert app_of(active, first) not in cluster.writers(after=second.acquired_at)
    assert active.alive() and standby.alive()


def test_partitioned_scheduler_is_replaced_and_cannot_write_when_it_reconnects(
    make_cluster: MakeCluster, postgres_server: PostgresServer
) -> None:
    cluster = make_cluster(2)
    with TcpProxy(postgres_server.port) as proxy:
        proxied = cluster.direct_url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
        active, standby = start_pair(cluster, first_db_url=proxied)
        run_id = cluster.trigger_and_wait_running()
        first = cluster.leader_is(active)
        assert first is not None
        proxy.cut()
        second = wait_for(lambda: cluster.leader_is(standby), 10, 0.02, "takeover after the cut")
        wait_for(
            lambda: "lost the scheduler lease" in active.output(), 10, 0.05, "the cut one to stop"
        )
        time.sleep(1)
        proxy.heal()
        cluster.assert_run_finished_once(run_id)
        wait_for(
            lambda: active.output().count("standby: scheduler") >= 1,
            30,
            0.05,
            "the reconnected one in standby",
        )
        assert app_of(active, first) not in cluster.writers(after=second.acquired_at)
        assert active.alive()


def test_sigterm_of_the_active_scheduler_hands_over_at_once(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(30)  # far longer than the wait below: no expiry involved
    active, standby = start_pair(cluster)
    run_id = cluster.trigger_and_wait_running()
    stopped = time.monotonic()
    assert active.stop() == 0
    wait_for(lambda: cluster.leader_is(standby), 10, 0.02, "the standby to take over")
    print(f"SIGTERM -> takeover in {time.monotonic() - stopped:.2f} s", file=sys.stderr)
    assert "released the scheduler lease" in active.output()
    cluster.assert_run_finished_once(run_id)


def test_sqlite_refuses_a_second_scheduler_with_a_clear_error(
    ketch_home: Path, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    env = KetchEnv(home=ketch_home, db_url=f"sqlite:///{ketch_home / 'ketch.db'}", dags_folder=dags)
    first = KetchProcess(env, "scheduler").start()
    try:
        wait_for(lambda: "acquired the scheduler lease" in first.output(), 60, 0.05, "the first")
        second = subprocess.run(
            [sys.executable, "-m", "ketch", "scheduler"],
            env=env.environ(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert second.stderr.strip() == (
            f"ketch: another ketch scheduler (pid {pid(first)}) is running against this "
            "SQLite database; SQLite supports one scheduler — use PostgreSQL for a standby"
        )
        assert first.alive()
    finally:
        first.stop()
        sys.stderr.write(first.output()[-5000:])
