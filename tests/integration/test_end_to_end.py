"""End-to-end: real `ketch` server processes, real task-try processes, real databases.

Every scenario runs on SQLite and on PostgreSQL (the ``db_url`` fixture) and on both
executors (local subprocesses, and Kubernetes pods against the API simulator, whose
fake kubelet runs each pod's command as a real process), through the REST API and
the CLI a user would use.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ketch.testing.kube_sim import KubeSimulator
from tests.support.ketch_process import Api, KetchEnv, KetchProcess, running, wait_for
from tests.support.kube_env import use_kubernetes
from tests.support.postgres import PostgresServer

EXAMPLES = Path(__file__).parents[2] / "src" / "ketch" / "example_dags"

SCENARIO_DAGS = '''
"""DAGs exercised by the end-to-end tests (written into a temporary DAGs folder)."""
import os
import signal
import time
from datetime import datetime, timedelta, timezone

from ketch import BashTask, dag, task, get_current_context

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
MARKS = os.environ["E2E_MARKS"]


def mark(name: str) -> None:
    """Append one line per execution, so a test can see that nothing ran twice."""
    with open(os.path.join(MARKS, name), "a") as f:
        f.write(f"{os.getpid()}\\n")


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def e2e_retry():
    @task(retries=2, retry_delay=timedelta(seconds=0.2))
    def flaky() -> int:
        ctx = get_current_context()
        mark("flaky")
        if ctx["try_number"] < 2:
            raise RuntimeError("first try fails on purpose")
        return ctx["try_number"]

    @task(retries=1, retry_delay=timedelta(seconds=0.1))
    def always_fails() -> None:
        raise ValueError("broken for good")

    flaky()
    always_fails()


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def e2e_timeout():
    BashTask(
        task_id="sleepy",
        bash_command="sleep 300 & echo $! > $E2E_MARKS/child.pid; wait",
        env={"E2E_MARKS": MARKS},
        execution_timeout=timedelta(seconds=1),
    )


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def e2e_bad_return():
    @task
    def returns_a_set():
        return {1, 2, object()}  # a set is stored (tagged); an object in it is not

    returns_a_set()


@dag(schedule=None, start_date=START, is_paused_upon_creation=False, max_active_tasks=8)
def e2e_slow_parallel():
    @task
    def slow(i: int) -> int:
        mark(f"slow_{i}")
        time.sleep(3)
        return i

    @task
    def total(values: list[int]) -> int:
        mark("total")
        return sum(values)

    total([slow.override(task_id=f"slow_{i}")(i) for i in range(4)])


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def e2e_zombie():
    @task(retries=0)
    def freezes() -> None:
        os.kill(os.getpid(), signal.SIGSTOP)

    freezes()


e2e_retry()
e2e_timeout()
e2e_bad_return()
e2e_slow_parallel()
e2e_zombie()
'''


@pytest.fixture
def dags_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "e2e_dags.py").write_text(SCENARIO_DAGS)
    return folder


def make_env(ketch_home: Path, db_url: str, dags_folder: Path, tmp_path: Path) -> KetchEnv:
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    return KetchEnv(
        home=ketch_home,
        db_url=db_url,
        dags_folder=dags_folder,
        extra={
            "E2E_MARKS": str(marks),
            "KETCH__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "0.5",
            "KETCH__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "3",
            "KETCH__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "0.5",
        },
    )


@pytest.fixture(scope="session")
def kube_simulator() -> Iterator[KubeSimulator]:
    with KubeSimulator() as simulator:
        yield simulator


@pytest.fixture(params=["local", "kubernetes"])
def env(
    request: pytest.FixtureRequest,
    ketch_home: Path,
    db_url: str,
    dags_folder: Path,
    tmp_path: Path,
) -> KetchEnv:
    env = make_env(ketch_home, db_url, dags_folder, tmp_path)
    if request.param == "kubernetes":
        use_kubernetes(env, request.getfixturevalue("kube_simulator"), tmp_path)
    return env


@pytest.fixture
def marks(env: KetchEnv) -> Path:
    return Path(env.extra["E2E_MARKS"])


@pytest.fixture
def standalone(env: KetchEnv) -> Iterator[tuple[KetchProcess, Api]]:
    api = Api(env.base_url)
    with running(env, "standalone") as process:
        wait_for(api.healthy, 60, 0.05, "web server")
        yield process, api


def ketch_cli(env: KetchEnv, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ketch", *args],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def trigger_and_wait(api: Api, dag_id: str, timeout: float = 60) -> tuple[dict, dict]:
    wait_for(lambda: api.dag(dag_id), 30, 0.05, f"{dag_id} parsed")
    run = api.trigger(dag_id)
    run = api.wait_run_finished(dag_id, run["dag_run_id"], timeout)
    return run, api.task_instances(dag_id, run["dag_run_id"])


def test_example_dags_run_to_success(standalone: tuple[KetchProcess, Api], env: KetchEnv) -> None:
    _, api = standalone
    env.dags_folder.joinpath("examples.py").unlink(missing_ok=True)
    for example in EXAMPLES.glob("example_*.py"):
        env.dags_folder.joinpath(example.name).write_text(example.read_text())
    dag_ids = ["example_etl", "example_branching", "example_fan_out_fan_in"]
    for dag_id in dag_ids:
        run, tis = trigger_and_wait(api, dag_id)
        assert run["state"] == "success", (dag_id, tis)
        assert all(ti["state"] in ("success", "skipped") for ti in tis.values()), tis
    _, branch_tis = trigger_and_wait(api, "example_branching")
    assert any(ti["state"] == "skipped" for ti in branch_tis.values()), "a branch path is skipped"


def test_retries_then_success_and_final_failure(
    standalone: tuple[KetchProcess, Api], marks: Path
) -> None:
    _, api = standalone
    run, tis = trigger_and_wait(api, "e2e_retry")
    assert tis["flaky"]["state"] == "success"
    assert tis["flaky"]["try_number"] == 2
    assert len((marks / "flaky").read_text().split()) == 2  # two tries, two processes
    assert tis["always_fails"]["state"] == "failed"
    assert tis["always_fails"]["try_number"] == 2  # one retry used
    assert run["state"] == "failed"


def test_execution_timeout_kills_the_process_group(
    standalone: tuple[KetchProcess, Api], marks: Path
) -> None:
    _, api = standalone
    _run, tis = trigger_and_wait(api, "e2e_timeout")
    assert tis["sleepy"]["state"] == "failed"
    assert "execution_timeout" in (tis["sleepy"].get("error") or ""), tis["sleepy"]
    child = int((marks / "child.pid").read_text())
    wait_for(lambda: not psutil.pid_exists(child), 10, 0.1, "bash's sleep child to be killed")


def test_non_json_return_value_fails_the_try_with_that_message(
    standalone: tuple[KetchProcess, Api],
) -> None:
    _, api = standalone
    run, tis = trigger_and_wait(api, "e2e_bad_return")
    assert run["state"] == "failed"
    assert "not JSON-serialisable" in (tis["returns_a_set"].get("error") or "")


def test_zombie_try_is_detected_and_failed(standalone: tuple[KetchProcess, Api]) -> None:
    _, api = standalone
    run, tis = trigger_and_wait(api, "e2e_zombie", timeout=60)
    assert run["state"] == "failed"
    assert tis["freezes"]["state"] == "failed"
    assert "heartbeat" in (tis["freezes"].get("error") or "").lower()


def test_broken_dag_file_is_reported_and_others_keep_running(
    standalone: tuple[KetchProcess, Api], env: KetchEnv
) -> None:
    _, api = standalone
    (env.dags_folder / "broken_ketch_dag.py").write_text("from ketch import dag\ndef broken(:\n")

    def has_error() -> list[dict]:
        body = api.http.get("/api/v1/importErrors").json()
        items = body["import_errors"] if isinstance(body, dict) else body
        return [e for e in items if e["filename"].endswith("broken_ketch_dag.py")]

    errors = wait_for(has_error, 30, 0.1, "import error recorded")
    assert "SyntaxError" in errors[0]["stacktrace"]
    cli = ketch_cli(env, "dags", "errors")
    assert "broken_ketch_dag.py" in cli.stdout
    run, _ = trigger_and_wait(api, "e2e_retry")
    assert run["state"] == "failed"  # ran to its (expected) end despite the broken file


def test_kill_9_scheduler_mid_run_adopts_tries_and_runs_nothing_twice(
    env: KetchEnv, marks: Path
) -> None:
    api = Api(env.base_url)
    first = KetchProcess(env, "standalone").start()
    try:
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("e2e_slow_parallel"), 30, 0.05, "DAG parsed")
        run_id = api.trigger("e2e_slow_parallel")["dag_run_id"]
        wait_for(
            lambda: (
                sum(
                    ti["state"] == "running"
                    for ti in api.task_instances("e2e_slow_parallel", run_id).values()
                )
                == 4
            ),
            30,
            0.05,
            "four tries running",
        )
        first.kill9()
    except BaseException:
        sys.stderr.write(first.output()[-10000:])
        first.stop()
        raise
    time.sleep(0.5)
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server after restart")
        run = api.wait_run_finished("e2e_slow_parallel", run_id, 60)
        tis = api.task_instances("e2e_slow_parallel", run_id)
    assert run["state"] == "success", tis
    for i in range(4):
        assert tis[f"slow_{i}"]["try_number"] == 1, tis[f"slow_{i}"]
        assert len((marks / f"slow_{i}").read_text().split()) == 1, f"slow_{i} ran twice"
    assert len((marks / "total").read_text().split()) == 1


def test_cli_trigger_wait_reports_failure_with_exit_code(
    standalone: tuple[KetchProcess, Api], env: KetchEnv
) -> None:
    _, api = standalone
    wait_for(lambda: api.dag("e2e_bad_return"), 30, 0.05, "DAG parsed")
    result = ketch_cli(env, "dags", "trigger", "e2e_bad_return", "--wait")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "returns_a_set" in result.stdout + result.stderr


def test_database_unreachable_at_start_is_a_clear_error(
    ketch_home: Path, dags_folder: Path, tmp_path: Path
) -> None:
    from tests.support.postgres import free_port

    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    env = make_env(ketch_home, url, dags_folder, tmp_path)
    result = ketch_cli(env, "scheduler", timeout=60)
    assert result.returncode != 0
    assert "cannot reach the metadata database" in result.stderr
    assert "Traceback" not in result.stderr


def test_scheduler_survives_a_database_outage(
    postgres_server: PostgresServer, ketch_home: Path, dags_folder: Path, tmp_path: Path
) -> None:
    """PostgreSQL only: a local SQLite file cannot drop mid-run; a database server can."""
    server = postgres_server
    env = make_env(ketch_home, server.create_database("outage"), dags_folder, tmp_path)
    marks = Path(env.extra["E2E_MARKS"])
    api = Api(env.base_url)
    with running(env, "standalone") as process:
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("e2e_slow_parallel"), 30, 0.05, "DAG parsed")
        run_id = api.trigger("e2e_slow_parallel")["dag_run_id"]
        wait_for(lambda: (marks / "slow_0").exists(), 30, 0.05, "tries running")
        server.stop()
        time.sleep(4)  # the tries finish while the database is down
        server.start()
        run = api.wait_run_finished("e2e_slow_parallel", run_id, 120)
        assert process.alive(), "the server died during the outage"
        assert "database" in process.output().lower()
    assert run["state"] == "success"
    assert len((marks / "total").read_text().split()) == 1
