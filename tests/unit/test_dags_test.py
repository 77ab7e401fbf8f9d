"""``ketch dags test`` and ``DAG.test()``: one run, every task in this process, through the
scheduler's own decisions and the real execution API.

Without a configured database the run goes to a throwaway SQLite database (nothing is left
in KETCH_HOME); with one (SQLite or PostgreSQL) the run is stored there.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner, Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch import DAG, BashOperator, task
from ketch import cli as ketch_cli
from ketch.db.models import DagRun, TaskInstance, XCom

BRANCHING = """
from datetime import datetime

from ketch import DAG, BashOperator, task

with DAG("branchy", schedule=None, start_date=datetime(2026, 1, 1), params={"n": 1}) as dag:

    @task.branch
    def pick(params):
        return "small" if params["n"] < 5 else "big"

    @task
    def small() -> dict[str, int]:
        print("on the small path")
        return {"count": 3, "other": 4}

    @task
    def big():
        print("on the big path")

    @task(trigger_rule="none_failed_min_one_success")
    def report(count, params=None):
        print(f"report got count={count} n={params['n']}")

    chosen = pick()
    s = small()
    chosen >> [s, big()]
    done = report(s["count"])
    echo = BashOperator(task_id="echo", bash_command="echo rendered n={{ params.n }} ds={{ ds }}")
    done >> echo
"""

FAILING = """
from datetime import datetime

from ketch import DAG, task

with DAG("failing", schedule=None, start_date=datetime(2026, 1, 1)):

    @task(retries=1, retry_delay=0)
    def boom():
        raise ValueError("the data is bad")

    @task
    def after(value):
        print("never printed")

    after(boom())
"""


def dags_test(folder: Path, *args: str) -> Result:
    argv = ["dags", "test", *args, "--dags-folder", str(folder)]
    return CliRunner().invoke(ketch_cli.cli, argv, catch_exceptions=False)


def write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def test_branching_conf_templating_and_multiple_outputs(tmp_path: Path, ketch_home: Path) -> None:
    folder = tmp_path / "dags"
    write(folder, "branchy.py", BRANCHING)
    result = dags_test(folder, "branchy", "2026-03-04T00:00:00+00:00", "-c", '{"n": 2}')
    assert result.exit_code == 0, result.output
    out = result.output
    assert "on the small path" in out and "on the big path" not in out
    assert "report got count=3 n=2" in out  # one key of a multiple_outputs dict, conf as params
    assert "rendered n=2 ds=2026-03-04" in out  # the bash command rendered with the run's context
    assert "  big: skipped" in out and "  echo: success" in out
    assert "of DAG branchy: success" in out
    assert "throwaway SQLite database" in out
    assert not (ketch_home / "ketch.db").exists()  # nothing left behind


def test_a_failing_task_is_retried_then_fails_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    write(folder, "failing.py", FAILING)
    result = CliRunner().invoke(
        ketch_cli.cli, ["dags", "test", "failing", "--dags-folder", str(folder)]
    )
    assert result.exit_code == 1, result.output
    out = result.output
    assert "--- task boom, try 1 ---" in out and "--- task boom, try 2 ---" in out
    assert "ValueError: the data is bad" in out
    assert "  after: upstream_failed" in out
    assert "DagRun failed" in out
    assert "never printed" not in out


def test_bad_conf_and_unknown_dag_are_one_line_errors(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    write(folder, "failing.py", FAILING)
    bad = CliRunner().invoke(
        ketch_cli.cli, ["dags", "test", "failing", "-c", "{nope", "--dags-folder", str(folder)]
    )
    assert bad.exit_code != 0 and "conf" in bad.output.lower()
    missing = CliRunner().invoke(
        ketch_cli.cli, ["dags", "test", "absent", "--dags-folder", str(folder)]
    )
    assert missing.exit_code != 0 and "'absent' not found" in missing.output


def test_the_run_is_stored_in_the_configured_database(tmp_path: Path, engine: Engine) -> None:
    folder = tmp_path / "dags"
    write(folder, "branchy.py", BRANCHING)
    result = dags_test(folder, "branchy", "2026-03-04T00:00:00+00:00")
    assert result.exit_code == 0, result.output
    assert "the configured database" in result.output
    with Session(engine) as session:
        run = session.scalars(select(DagRun).where(DagRun.dag_id == "branchy")).one()
        states = dict(
            session.execute(
                select(TaskInstance.task_id, TaskInstance.state).where(
                    TaskInstance.dag_run_id == run.id
                )
            ).all()
        )
        counted = session.scalar(
            select(XCom.value).where(XCom.dag_run_id == run.id, XCom.key == "count")
        )
    assert run.state == "success" and run.run_type == "manual"
    assert run.logical_date == datetime(2026, 3, 4, tzinfo=UTC)
    assert states == {
        "pick": "success",
        "small": "success",
        "big": "skipped",
        "report": "success",
        "echo": "success",
    }
    assert counted == 3
    again = dags_test(folder, "branchy", "2026-03-04T00:00:00+00:00")
    assert again.exit_code != 0 and "already has run" in again.output


def test_dag_test_in_a_test_function(capsys: object) -> None:
    """The pytest idiom: a DAG built in the test itself (not importable from its file)."""
    with DAG("in_test", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task
        def produce() -> int:
            return 20

        @task
        def consume(value: int, params: dict[str, int]) -> int:
            print(f"consumed {value + params['extra']}")
            return value + params["extra"]

        consume(produce()) >> BashOperator(task_id="shell", bash_command="exit 3")

    result = dag.test(run_conf={"extra": 22})
    assert result.state == "failed"
    assert result.task_states == {"produce": "success", "consume": "success", "shell": "failed"}
    assert result.stuck == []
    assert "consumed 42" in capsys.readouterr().out  # type: ignore[attr-defined]


DEPENDS = """
from datetime import datetime

from ketch import DAG, task

with DAG("past", schedule=None, start_date=datetime(2026, 1, 1), params={"fail": False}):

    @task(depends_on_past=True)
    def step(params):
        if params["fail"]:
            raise RuntimeError("failed on purpose")

    step()
"""


def test_a_task_held_back_by_depends_on_past_is_reported(tmp_path: Path, engine: Engine) -> None:
    folder = tmp_path / "dags"
    write(folder, "past.py", DEPENDS)
    first = dags_test(folder, "past", "2026-01-01T00:00:00+00:00", "-c", '{"fail": true}')
    assert first.exit_code == 1 and "DagRun failed" in first.output
    second = dags_test(folder, "past", "2026-01-02T00:00:00+00:00")
    assert second.exit_code == 1, second.output
    assert "  step: no state" in second.output
    assert "DagRun did not finish: step cannot run" in second.output
    earlier = dags_test(folder, "past", "2025-12-31T00:00:00+00:00")  # no previous run
    assert earlier.exit_code == 0, earlier.output


def test_a_sensor_in_reschedule_mode_pokes_again_until_it_finds(tmp_path: Path) -> None:
    """dags test waits out a reschedule like a retry delay (the sensor's next poke)."""
    marker = tmp_path / "ready"
    with DAG("sensing", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task.sensor(poke_interval=0.2, timeout=60, mode="reschedule")
        def wait_for_file() -> bool:
            pokes = tmp_path / "pokes"
            count = int(pokes.read_text()) + 1 if pokes.exists() else 1
            pokes.write_text(str(count))
            if count == 3:
                marker.write_text("now")
            return marker.exists()

        wait_for_file()

    result = dag.test()
    assert result.state == "success", result
    assert result.task_states == {"wait_for_file": "success"}
    assert (tmp_path / "pokes").read_text() == "3"


SECRETS = """
import logging
from datetime import datetime

from ketch import DAG, BashOperator, Variable, task

with DAG("leaky", schedule=None, start_date=datetime(2026, 1, 1)):

    @task
    def careless():
        secret = Variable.get("warehouse_password")
        print("printed: " + secret)
        logging.getLogger("my.task").warning("logged: %s", secret)
        print("in two wri", end="")
        print("tes: " + secret[:4], end="")
        print(secret[4:])

    careless() >> BashOperator(
        task_id="shell", bash_command="echo echoed {{ var.value.warehouse_password }}"
    )
"""


def test_a_sensitive_value_is_masked_in_what_the_tries_print(
    tmp_path: Path, engine: Engine
) -> None:
    """As the log pump masks a real try's log: printed, logged, split over writes, echoed."""
    folder = tmp_path / "dags"
    write(folder, "leaky.py", SECRETS)
    secret = "s3cr3t-Warehouse-pw"
    stored = CliRunner().invoke(ketch_cli.cli, ["variables", "set", "warehouse_password", secret])
    assert stored.exit_code == 0, stored.output
    result = dags_test(folder, "leaky")
    assert result.exit_code == 0, result.output
    out = result.output + (result.stderr if result.stderr_bytes else "")
    assert secret not in out
    assert "printed: ***" in out and "in two writes: ***" in out and "echoed ***" in out
