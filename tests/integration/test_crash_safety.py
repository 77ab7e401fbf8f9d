"""Crash safety (issue 7): nothing lost, nothing run twice.

Real ``ketch`` processes run a generated DAG (tests/support/crash_dags.py) whose every
task writes a marker line per execution of its code (tests/support/markers.py). Then:

- **fault points**: ``ketch standalone`` with ``KETCH_FAULT_POINTS=<point>@<n>`` SIGKILLs
  itself at the n-th hit of one commit boundary (queueing, launching, the event path,
  adoption, the execution API's start and finish); it is restarted without the variable;
- **random kill -9** (soak): ``ketch standalone`` killed at random instants, restarted each
  time; a second variant also kills the fork server and every try process (pods on
  Kubernetes) at each kill, so tries are lost too and their retries take over;
- **split processes**: ``ketch web`` and ``ketch scheduler`` apart, the scheduler killed
  while tries run and finish against the web, then started again.

Each run must finish with the final states of a run without kills (derived from the DAG's
design, and checked against a real run by ``test_reference_run_matches_the_design``), and
every (task, try) must have run its code at most once; without killed tries, exactly as
often as in a run without kills.

The soak tests read ``KETCH_SOAK_SCALE``: ``short`` (default, CI: 3 kills, a 44-task DAG)
or ``full`` (20 kills during a 208-task run: 10 chains of 20); ``KETCH_SOAK_SEED`` replays
a seed (every failure message shows the seed used).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from ketch.faults import ENV as FAULT_ENV
from ketch.faults import FAULT_POINTS
from ketch.testing.kube_sim import KubeSimulator
from tests.support.crash_dags import (
    FINISHED_RUN_STATES,
    ChainsDag,
    check_run,
    describe_states,
    run_problems,
)
from tests.support.ketch_process import Api, KetchEnv, KetchProcess
from tests.support.kube_env import use_kubernetes

# The value of this variable (the test's tmp_path) tags every process of one test: the
# servers, the fork server, every try and every pod inherit it, so the kill-everything
# variant finds them all with psutil, wherever they were reparented.
TAG_ENV = "KETCH_CRASH_TEST_TAG"

RUN_TIMEOUT = 120.0  # seconds for a run to finish after the last restart (no speed claim)
DEATH_TIMEOUT = 90.0  # seconds for an armed fault point to fire

# The hit of each fault point that kills: late enough to be mid-run (some tries done,
# others queued or running), early enough to fire in the small DAG.
FAULT_HIT = {
    "queueing.after_queued_commit": 3,
    "queueing.after_launch": 3,
    "queueing.after_launch_commit": 3,
    "events.before_commit": 3,
    "events.after_commit": 3,
    "adoption.after_relaunch": 1,  # armed on a restart after a crash that left queued tries
    "api.start.before_commit": 5,
    "api.start.after_commit": 5,
    "api.finish.before_commit": 5,
    "api.finish.after_commit": 5,
}
# Fault points of features the chains DAG does not use, aimed at by their own suites.
OWN_SUITES = {
    "expansion.before_commit": "tests/integration/test_mapping_crash.py",
    "expansion.after_commit": "tests/integration/test_mapping_crash.py",
    "revision.before_commit": "tests/integration/test_mapping_revision.py",
    "revision.after_commit": "tests/integration/test_mapping_revision.py",
    "mapped_group.before_commit": "tests/integration/test_mapped_group_crash.py",
    "mapped_group.after_commit": "tests/integration/test_mapped_group_crash.py",
    # Reached only by sensors in reschedule mode.
    "api.reschedule.before_commit": "tests/integration/test_reschedule_sensors.py",
    "api.reschedule.after_commit": "tests/integration/test_reschedule_sensors.py",
}
# Run on PostgreSQL and on the Kubernetes simulator too: a launch whose external ids were
# never recorded, an event path killed mid-transaction, a finish committed but not answered.
REPRESENTATIVE_POINTS = ["queueing.after_launch", "events.before_commit", "api.finish.after_commit"]


@dataclass(frozen=True)
class SoakScale:
    kills: int
    min_kills: int  # kills that must land before the run ends (else the DAG is too short)
    chains: int
    length: int
    sleep: float
    delay: tuple[float, float]  # seconds of progress between a restart and the next kill
    timeout: float  # pytest-timeout of one soak test


SOAK_SCALES = {
    "short": SoakScale(
        kills=3, min_kills=1, chains=4, length=10, sleep=0.1, delay=(0.3, 1.5), timeout=300
    ),
    "full": SoakScale(
        kills=20, min_kills=20, chains=10, length=20, sleep=0.1, delay=(0.2, 1.2), timeout=1800
    ),
}
_scale_name = os.environ.get("KETCH_SOAK_SCALE", "short")
if _scale_name not in SOAK_SCALES:
    raise ValueError(f"KETCH_SOAK_SCALE must be one of {sorted(SOAK_SCALES)}, not {_scale_name!r}")
SOAK = SOAK_SCALES[_scale_name]


def test_fault_hits_name_every_fault_point() -> None:
    assert set(FAULT_HIT) | set(OWN_SUITES) == set(FAULT_POINTS), "a fault point nobody aims at"
    assert not set(FAULT_HIT) & set(OWN_SUITES)
    assert set(REPRESENTATIVE_POINTS) <= set(FAULT_POINTS)


def test_the_check_sees_a_try_run_twice_a_lost_task_and_a_wrong_state(tmp_path: Path) -> None:
    """The checker itself, on a made-up run: silent on a perfect one, loud on each defect."""
    dag = ChainsDag("crash_chains", tmp_path / "marks")
    dag.write(tmp_path)
    run = {"dag_run_id": "r1", "state": "success"}
    tis = {
        t: {"task_id": t, "state": e.state, "try_number": e.try_number}
        for t, e in dag.expected().items()
    }

    def write_markers(skip: tuple[str, int] | None = None) -> None:
        for path in dag.marks.glob("*.marks"):
            path.unlink()
        for t, e in dag.expected().items():
            for try_number in range(1, e.executions + 1):
                if (t, try_number) != skip:
                    with (dag.marks / f"crash_chains.{t}.marks").open("a") as f:
                        f.write(f"crash_chains r1 {t} {try_number} {1000 + try_number}\n")

    write_markers()
    assert run_problems(dag, run, tis) == []
    assert run_problems(dag, run, tis, tries_killed=True) == []

    with (dag.marks / "crash_chains.c0_02.marks").open("a") as f:
        f.write("crash_chains r1 c0_02 1 4242\n")
    assert any("c0_02: try 1 RAN 2 TIMES" in p for p in run_problems(dag, run, tis))
    assert any("RAN 2 TIMES" in p for p in run_problems(dag, run, tis, tries_killed=True))

    write_markers(skip=("c1_04", 1))  # a task that never ran yet shows success
    assert any(p.startswith("c1_04:") for p in run_problems(dag, run, tis))
    assert any("left no marker" in p for p in run_problems(dag, run, tis, tries_killed=True))

    write_markers()
    lost = {**tis, "c3_05": {**tis["c3_05"], "state": "failed"}}
    assert any("expected state 'success'" in p for p in run_problems(dag, run, lost))
    retried = {**tis, "c0_01": {**tis["c0_01"], "try_number": 2}}
    assert any("expected try_number 1" in p for p in run_problems(dag, run, retried))
    assert run_problems(dag, {**run, "state": "failed"}, tis) == [
        "run state 'failed', expected 'success'"
    ]


# -- fixtures ------------------------------------------------------------------------------------


def backends(*combos: tuple[str, str]) -> pytest.MarkDecorator:
    """Parametrize a test over (database, executor) pairs; ``db_url`` is tests/conftest.py's."""
    return pytest.mark.parametrize(
        ("db_url", "executor"),
        [pytest.param(db, ex, id=f"{db}-{ex}") for db, ex in combos],
        indirect=["db_url"],
    )


@pytest.fixture(scope="module")
def crash_kube_sim() -> Iterator[KubeSimulator]:
    with KubeSimulator() as simulator:
        yield simulator


@pytest.fixture
def env(
    request: pytest.FixtureRequest, ketch_home: Path, db_url: str, executor: str, tmp_path: Path
) -> KetchEnv:
    dags = tmp_path / "dags"
    dags.mkdir()
    env = KetchEnv(home=ketch_home, db_url=db_url, dags_folder=dags, extra={TAG_ENV: str(tmp_path)})
    if executor == "kubernetes":
        use_kubernetes(env, request.getfixturevalue("crash_kube_sim"), tmp_path)
    return env


@pytest.fixture
def cluster(env: KetchEnv) -> Iterator[Cluster]:
    cluster = Cluster(env)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def chains_dag(env: KetchEnv, **kwargs: Any) -> ChainsDag:
    dag = ChainsDag("crash_chains", env.dags_folder.parent / "marks", **kwargs)
    dag.write(env.dags_folder)
    return dag


# -- the processes of one test -------------------------------------------------------------------


class Cluster:
    """The ketch server processes of one test, one after another (restarts), with their logs."""

    def __init__(self, env: KetchEnv) -> None:
        self.env = env
        self.api = Api(env.base_url)
        self.processes: list[KetchProcess] = []
        self._names = itertools.count(1)
        self.context = ""  # prefixed to every failure message (a seed, a fault point)

    # -- start, kill, stop --

    def start(
        self, command: str = "standalone", *, faults: str | None = None, healthy: bool = True
    ) -> KetchProcess:
        env = self.env
        if faults:
            env = replace(env, extra={**env.extra, FAULT_ENV: faults})
        name = f"{command}-{next(self._names)}" + (f"-{faults}" if faults else "")
        process = KetchProcess(env, command, name=name).start()
        self.processes.append(process)
        if healthy:
            self.wait(self.api.healthy, 60, f"web server of {name}", process)
        return process

    def kill9(self, process: KetchProcess) -> None:
        if process.alive():
            process.kill9()

    def kill_everything(self) -> list[str]:
        """SIGKILL every process of this test: servers first, then whatever they left
        (fork server, tries, pods), found by the tag every one of them inherited."""
        for process in self.processes:
            self.kill9(process)
        return self._kill_tagged()

    def _kill_tagged(self) -> list[str]:
        me = os.getpid()
        killed: list[str] = []
        for _ in range(50):
            found = [p for p in psutil.process_iter() if p.pid != me and _tagged(p, self.tag)]
            if not found:
                return killed
            for p in found:
                with contextlib.suppress(psutil.Error):
                    killed.append(f"{p.pid} {' '.join(p.cmdline()[1:4])}")
                    p.kill()
            psutil.wait_procs(found, timeout=5)
        raise AssertionError(f"{self.context}: processes of this test survive SIGKILL: {found}")

    def shutdown(self) -> None:
        for process in self.processes:
            process.stop()
        # Nothing of this test may outlive it (tries of a killed server, pods' processes).
        self._kill_tagged()
        sys.stderr.write(self.logs(20000))

    @property
    def tag(self) -> str:
        return self.env.extra[TAG_ENV]

    # -- waiting, with the logs in every failure --

    def logs(self, chars: int = 6000) -> str:
        per = max(1500, chars // max(1, len(self.processes)))
        parts = []
        for p in self.processes:
            state = "running" if p.alive() else f"exit code {p.proc.returncode if p.proc else None}"
            out = p.output()
            tail = out[-per:].partition("\n")[2] if len(out) > per else out  # whole lines
            parts.append(f"--- ketch {p.name} ({state}), last lines ---\n{tail}")
        return "\n".join(parts)

    def fail(self, message: str) -> AssertionError:
        return AssertionError(f"{self.context}\n{message}\n{self.logs()}")

    def wait(
        self,
        predicate: Callable[[], Any],
        timeout: float,
        what: str,
        process: KetchProcess | None = None,
    ) -> Any:
        """``predicate()`` until truthy; fails at once if ``process`` (one that must stay
        up) died, and after ``timeout`` with the last value and the servers' logs."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except httpx.HTTPError as exc:
                last = exc
            else:
                if last:
                    return last
            if process is not None and not process.alive():
                raise self.fail(f"ketch {process.name} exited while waiting for {what}")
            time.sleep(0.05)
        raise self.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")

    # -- the run --

    def trigger(self, dag: ChainsDag, process: KetchProcess | None = None) -> str:
        self.wait(lambda: self.api.dag(dag.dag_id), 60, f"{dag.dag_id} parsed", process)
        return str(self.api.trigger(dag.dag_id)["dag_run_id"])

    def run_state(self, dag: ChainsDag, run_id: str) -> str | None:
        """The run's state; None while the web server is unreachable."""
        try:
            return str(self.api.run(dag.dag_id, run_id)["state"])
        except httpx.HTTPError:
            return None

    def wait_finished(
        self,
        dag: ChainsDag,
        run_id: str,
        process: KetchProcess | None = None,
        timeout: float = RUN_TIMEOUT,
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        def finished() -> bool:
            return self.run_state(dag, run_id) in FINISHED_RUN_STATES

        try:
            self.wait(finished, timeout, f"run {run_id} to finish", process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nTI states now: {self._states(dag, run_id)}") from None
        return self.api.run(dag.dag_id, run_id), self.api.task_instances(dag.dag_id, run_id)

    def _states(self, dag: ChainsDag, run_id: str) -> str:
        try:
            tis = self.api.task_instances(dag.dag_id, run_id)
        except (httpx.HTTPError, AssertionError) as exc:
            return f"(unavailable: {exc})"
        unfinished = {
            t: (ti["state"], ti["try_number"])
            for t, ti in tis.items()
            if ti["state"] not in ("success", "failed", "skipped", "upstream_failed")
        }
        return f"{describe_states(tis)}; unfinished: {unfinished}"

    def wait_fault(
        self, process: KetchProcess, point: str, dag: ChainsDag, run_id: str | None
    ) -> None:
        """Wait until ``process`` killed itself at ``point``."""
        deadline = time.monotonic() + DEATH_TIMEOUT
        while process.alive():
            if run_id is not None and self.run_state(dag, run_id) in FINISHED_RUN_STATES:
                raise self.fail(
                    f"the run finished but fault point {point} never fired "
                    f"(is it placed in the code? is it reached {FAULT_HIT[point]} times?)"
                )
            if time.monotonic() > deadline:
                raise self.fail(f"fault point {point} did not fire within {DEATH_TIMEOUT:.0f}s")
            time.sleep(0.05)
        assert process.proc is not None
        code = process.proc.returncode
        if code != -signal.SIGKILL or f"fault point {point} reached" not in process.output():
            raise self.fail(f"ketch {process.name} exited with {code}, not by fault point {point}")


def _tagged(process: psutil.Process, tag: str) -> bool:
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.environ().get(TAG_ENV) == tag
    except psutil.Error:
        return False


# -- a run without kills -------------------------------------------------------------------------


@backends(("sqlite", "local"))
def test_reference_run_matches_the_design(cluster: Cluster, env: KetchEnv) -> None:
    """The expectations every other test checks against, from a run nobody kills."""
    dag = chains_dag(env)
    server = cluster.start()
    run_id = cluster.trigger(dag, server)
    run, tis = cluster.wait_finished(dag, run_id, server)
    check_run(dag, run, tis, context="a run without kills")
    states = {ti["state"] for ti in tis.values()}
    assert states == {"success", "failed", "skipped", "upstream_failed"}, states


# -- fault points: a kill aimed at each commit boundary ------------------------------------------


def crash_at_fault_point(cluster: Cluster, env: KetchEnv, point: str) -> None:
    """Run the DAG with ``point`` armed, let the process kill itself there, restart it
    without faults; the run finishes exactly as a run without kills."""
    hit = FAULT_HIT[point]
    cluster.context = f"fault point {point}@{hit}"
    dag = chains_dag(env)
    if point == "adoption.after_relaunch":
        # Adoption relaunches only tries left queued and never launched: crash there first.
        first = "queueing.after_queued_commit"
        server = cluster.start(faults=f"{first}@{FAULT_HIT[first]}")
        run_id = cluster.trigger(dag, server)
        cluster.wait_fault(server, first, dag, run_id)
        # Dies during start-up (adoption), maybe before its web server answers.
        server = cluster.start(faults=f"{point}@{hit}", healthy=False)
        cluster.wait_fault(server, point, dag, None)
    else:
        server = cluster.start(faults=f"{point}@{hit}")
        run_id = cluster.trigger(dag, server)
        cluster.wait_fault(server, point, dag, run_id)
    server = cluster.start()
    run, tis = cluster.wait_finished(dag, run_id, server)
    check_run(dag, run, tis, context=cluster.context)


@pytest.mark.parametrize("point", sorted(FAULT_HIT))
@backends(("sqlite", "local"))
def test_kill_at_fault_point_loses_nothing_and_runs_nothing_twice(
    cluster: Cluster, env: KetchEnv, point: str
) -> None:
    crash_at_fault_point(cluster, env, point)


@pytest.mark.parametrize("point", REPRESENTATIVE_POINTS)
@backends(("postgresql", "local"), ("sqlite", "kubernetes"))
def test_kill_at_fault_point_on_postgresql_and_kubernetes(
    cluster: Cluster, env: KetchEnv, point: str
) -> None:
    crash_at_fault_point(cluster, env, point)


# -- random kill -9 (soak) -----------------------------------------------------------------------


def random_kills(cluster: Cluster, env: KetchEnv, *, kill_tries: bool) -> None:
    """``kill -9`` at random instants during a run, restart each time, then check the run.
    ``kill_tries``: the fork server and every try (or pod) die with the scheduler, and
    retries take over."""
    seed = int(os.environ.get("KETCH_SOAK_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    what = "scheduler, fork server and every try" if kill_tries else "ketch standalone"
    cluster.context = (
        f"random kill -9 of {what}, KETCH_SOAK_SCALE={_scale_name}, "
        f"seed {seed} (replay: KETCH_SOAK_SEED={seed})"
    )
    dag = chains_dag(
        env,
        chains=SOAK.chains,
        length=SOAK.length,
        sleep=SOAK.sleep,
        extra_retries=SOAK.kills if kill_tries else 0,
    )
    server = cluster.start()
    run_id = cluster.trigger(dag, server)
    instants: list[str] = []
    for _ in range(SOAK.kills):
        time.sleep(rng.uniform(*SOAK.delay))
        if not server.alive():
            raise cluster.fail(f"ketch {server.name} died on its own")
        state = cluster.run_state(dag, run_id)
        if state in FINISHED_RUN_STATES:
            break
        if kill_tries:
            killed = cluster.kill_everything()
            instants.append(f"{server.name}: {len(killed)} processes")
        else:
            cluster.kill9(server)
            instants.append(server.name)
        server = cluster.start()
    cluster.context += f"; {len(instants)} kills ({', '.join(instants)})"
    assert len(instants) >= SOAK.min_kills, (
        f"{cluster.context}: the run finished before {SOAK.min_kills} kills landed"
    )
    run, tis = cluster.wait_finished(dag, run_id, server, timeout=RUN_TIMEOUT + 10 * SOAK.kills)
    check_run(dag, run, tis, tries_killed=kill_tries, context=cluster.context)
    print(cluster.context)  # shown with -rP: how many kills landed mid-run


@pytest.mark.soak
@pytest.mark.timeout(SOAK.timeout)
@pytest.mark.parametrize("kill_tries", [False, True], ids=["scheduler", "everything"])
@backends(("sqlite", "local"), ("postgresql", "local"))
def test_random_kill_9_loses_nothing_and_runs_nothing_twice(
    cluster: Cluster, env: KetchEnv, kill_tries: bool
) -> None:
    random_kills(cluster, env, kill_tries=kill_tries)


@pytest.mark.soak
@pytest.mark.timeout(SOAK.timeout)
@backends(("sqlite", "kubernetes"))
def test_random_kill_9_of_scheduler_and_pods_on_kubernetes(cluster: Cluster, env: KetchEnv) -> None:
    """Once on the simulator: the scheduler and every pod's process die at each kill (the
    scheduler-only kills on Kubernetes are the fault-point tests above)."""
    random_kills(cluster, env, kill_tries=True)


# -- web and scheduler apart: the scheduler down while tries finish ------------------------------


@backends(("sqlite", "local"), ("postgresql", "local"))
def test_scheduler_down_while_tries_finish_against_the_web(cluster: Cluster, env: KetchEnv) -> None:
    cluster.context = "ketch web and ketch scheduler apart, the scheduler killed mid-run"
    dag = chains_dag(env, chains=4, length=4, sleep=1.0)
    web = cluster.start("web")
    scheduler = cluster.start("scheduler", healthy=False)
    run_id = cluster.trigger(dag, scheduler)

    def running() -> set[str]:
        tis = cluster.api.task_instances(dag.dag_id, run_id)
        return {t for t, ti in tis.items() if ti["state"] == "running"}

    def three_running() -> set[str]:
        now = running()
        return now if len(now) >= 3 else set()

    at_kill = cluster.wait(three_running, 60, "3 tries running", scheduler)
    cluster.kill9(scheduler)

    # The tries keep running, and report their end to the web server that stayed up.
    def ended() -> dict[str, str]:
        tis = cluster.api.task_instances(dag.dag_id, run_id)
        states = {t: tis[t]["state"] for t in at_kill}
        return states if not any(s == "running" for s in states.values()) else {}

    states = cluster.wait(
        ended, 60, f"the tries running at the kill ({sorted(at_kill)}) to end", web
    )
    assert any(s in ("success", "failed", "up_for_retry") for s in states.values()), (
        f"{cluster.context}: no try recorded its end while the scheduler was down: {states}"
    )
    assert cluster.run_state(dag, run_id) == "running", "finished without a scheduler?"

    scheduler = cluster.start("scheduler", healthy=False)
    run, tis = cluster.wait_finished(dag, run_id, scheduler)
    if not web.alive():
        raise cluster.fail("the web server died")
    check_run(dag, run, tis, context=cluster.context)
