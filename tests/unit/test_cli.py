"""The ``ketch`` command through click's CliRunner (and one real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch import cli
from ketch.config import get_settings
from ketch.db.models import DagRun, TaskInstance
from tests.unit.test_operations import add_dag, add_run, serialized_chain


@pytest.fixture(autouse=True)
def _database_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the database backend: a KETCH_API_URL in the shell must not count."""
    monkeypatch.delenv("KETCH_API_URL", raising=False)
    monkeypatch.delenv("KETCH_API_TOKEN", raising=False)


def ketch(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli.cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def db(sqlite_engine: Engine) -> Engine:
    with Session(sqlite_engine) as session:
        etl = add_dag(session, serialized_chain())
        add_dag(session, serialized_chain("other"), paused=True)
        states = {"extract": "success", "transform": "failed", "load": "upstream_failed"}
        add_run(session, etl, "r1", {**states, "report": "success"}, run_state="failed")
        session.commit()
    return sqlite_engine


def test_dags_list_as_table_and_json(db: Engine) -> None:
    table = ketch("dags", "list")
    assert table.exit_code == 0, table.output
    header, rule, *rows = table.output.splitlines()
    assert header.split()[:2] == ["dag_id", "paused"] and set(rule) <= {"-", " "}
    assert rows[0].split()[:2] == ["etl", "no"] and "failed" in rows[0]
    assert rows[1].split()[:2] == ["other", "yes"]
    as_json = json.loads(ketch("dags", "list", "--output", "json").output)
    assert [d["dag_id"] for d in as_json] == ["etl", "other"]
    assert as_json[0]["tags"] == ["team-a"] and as_json[0]["last_run_state"] == "failed"
    only_paused = json.loads(ketch("dags", "list", "--paused", "-o", "json").output)
    assert [d["dag_id"] for d in only_paused] == ["other"]


def test_runs_tasks_and_states_listings(db: Engine) -> None:
    runs = json.loads(ketch("dags", "runs", "etl", "-o", "json").output)
    assert [r["dag_run_id"] for r in runs] == ["r1"]
    tasks = ketch("tasks", "list", "etl")
    assert [ln.split()[0] for ln in tasks.output.splitlines()[2:]] == [
        "extract",
        "transform",
        "load",
        "report",
    ]
    states = json.loads(ketch("tasks", "states", "etl", "r1", "-o", "json").output)
    assert {s["task_id"]: s["state"] for s in states}["transform"] == "failed"
    missing = ketch("dags", "runs", "nope")
    assert missing.exit_code == 1 and "DAG 'nope' not found" in missing.output


def test_trigger_prints_the_run_and_reports_errors(db: Engine) -> None:
    ok = ketch("dags", "trigger", "etl", "--conf", '{"n": 4}', "--run-id", "cli1", "-o", "json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["params"] == {"n": 4}
    assert ketch("dags", "trigger", "etl", "--run-id", "cli1").exit_code == 1
    bad_json = ketch("dags", "trigger", "etl", "--conf", "{nope")
    assert bad_json.exit_code == 1 and "--conf is not valid JSON" in bad_json.output
    not_object = ketch("dags", "trigger", "etl", "--conf", "[1]")
    assert not_object.exit_code == 1 and "JSON object" in not_object.output
    invalid = ketch("dags", "trigger", "etl", "--conf", '{"n": 0}')
    assert invalid.exit_code == 1 and "param 'n'" in invalid.output
    unknown = ketch("dags", "trigger", "nope")
    assert unknown.exit_code == 1 and "'nope'" in unknown.output
    paused = ketch("dags", "trigger", "other")
    assert paused.exit_code == 0 and "is paused" in paused.output


def _finish_run_later(engine: Engine, dag_id: str, *, fail: str | None) -> threading.Thread:
    """Plays the scheduler: once the run exists, end its tasks one by one."""

    def play() -> None:
        with Session(engine) as session:
            run = None
            while run is None:
                run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id)).first()
                time.sleep(0.02)
            for ti in session.scalars(
                select(TaskInstance).where(TaskInstance.dag_run_id == run.id)
            ):
                failed = ti.task_id == fail
                ti.state = "failed" if failed else "success"
                ti.error = "ValueError: bad input\n" if failed else None
                session.commit()
                time.sleep(0.05)
            run.state = "failed" if fail else "success"
            session.commit()

    thread = threading.Thread(target=play)
    thread.start()
    return thread


@pytest.mark.parametrize("fail", [None, "transform"])
def test_trigger_wait_shows_progress_and_exits_with_the_outcome(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, fail: str | None
) -> None:
    with Session(sqlite_engine) as session:
        add_dag(session, serialized_chain())
        session.commit()
    monkeypatch.setattr(cli.dags, "WAIT_POLL_SECONDS", 0.02)
    player = _finish_run_later(sqlite_engine, "etl", fail=fail)
    result = ketch("dags", "trigger", "etl", "--wait")
    player.join()
    assert "4/4 tasks done" in result.output
    if fail:
        assert result.exit_code == 1
        assert "failed: transform: ValueError: bad input" in result.output
        assert "4/4 tasks done, 1 failed" in result.output
    else:
        assert result.exit_code == 0 and "4/4 tasks done, 0 failed" in result.output
    assert result.output.rstrip().endswith("failed" if fail else "success")


def test_clear_asks_unless_yes(db: Engine) -> None:
    declined = ketch("tasks", "clear", "etl", "r1", "-t", "transform", "--downstream", input="n\n")
    assert declined.exit_code == 1 and "transform (failed)" in declined.output
    with Session(db) as session:
        assert (
            session.scalars(
                select(TaskInstance.state).where(TaskInstance.task_id == "transform")
            ).one()
            == "failed"
        )
    done = ketch("tasks", "clear", "etl", "r1", "-t", "transform", "--downstream", "--yes")
    assert done.exit_code == 0 and "cleared 2 task instance(s)" in done.output
    with Session(db) as session:
        states = dict(session.execute(select(TaskInstance.task_id, TaskInstance.state)).all())
    assert states == {"extract": "success", "transform": None, "load": None, "report": "success"}


def test_pause_unpause(db: Engine) -> None:
    assert ketch("dags", "unpause", "other").output.strip() == "DAG other unpaused"
    listed = json.loads(ketch("dags", "list", "-o", "json").output)
    assert all(not d["is_paused"] for d in listed)
    assert ketch("dags", "pause", "nope").exit_code == 1


def test_logs_prints_the_try_log(db: Engine) -> None:
    from ketch.executors.base import TryKey
    from ketch.worker.task_log import log_path

    path = log_path(get_settings().log_folder, TryKey("etl", "r1", "transform", 1))
    path.parent.mkdir(parents=True)
    path.write_text("hello from the try\n")
    assert ketch("tasks", "logs", "etl", "r1", "transform").output == "hello from the try\n"
    followed = ketch("tasks", "logs", "etl", "r1", "transform", "--follow")
    assert followed.output == "hello from the try\n"  # finished try: prints all, then stops
    assert ketch("tasks", "logs", "etl", "r1", "transform", "--try", "2").exit_code == 1


def add_return_value(engine: Engine, task_id: str, value: object) -> None:
    from datetime import UTC, datetime

    from ketch.db.models import XCom

    with Session(engine) as session:
        run_pk = session.scalars(select(DagRun.id).where(DagRun.run_id == "r1")).one()
        stamp = datetime(2026, 3, 1, tzinfo=UTC)
        session.add(
            XCom(
                dag_run_id=run_pk, task_id=task_id, key="return_value", value=value, timestamp=stamp
            )
        )
        session.commit()


XCOM_VALUE = {
    "rows": 3,
    "pair": {"__classname__": "builtins.tuple", "__version__": 1, "__data__": [1, 2]},
}


def test_tasks_xcom_prints_the_return_value_as_json(db: Engine) -> None:
    add_return_value(db, "extract", XCOM_VALUE)
    shown = ketch("tasks", "xcom", "etl", "r1", "extract")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == XCOM_VALUE
    missing = ketch("tasks", "xcom", "etl", "r1", "load")
    assert missing.exit_code == 1
    assert missing.output == (
        "ketch: XCom entry with key 'return_value' of task 'load' in run 'r1' not found\n"
    )
    assert "DAG run 'nope'" in ketch("tasks", "xcom", "etl", "nope", "extract").output


def test_tasks_states_json_carries_the_try_history(db: Engine) -> None:
    states = json.loads(ketch("tasks", "states", "etl", "r1", "-o", "json").output)
    assert [t["try_number"] for t in states[0]["tries"]] == [1]


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", "very-secret-key")
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", "postgresql://u:pw@db/ketch")
    get_settings.cache_clear()
    toml_out = ketch("config", "show").output
    assert "very-secret-key" not in toml_out and "pw@db" not in toml_out
    assert 'fernet_key = "***"' in toml_out and "[core]" in toml_out
    as_json = json.loads(ketch("config", "show", "-o", "json").output)
    assert as_json["core"]["fernet_key"] == "***"
    assert as_json["api"]["host"] == "127.0.0.1"


def test_db_errors_are_one_line_without_traceback(
    ketch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unmigrated = ketch("dags", "list")
    assert unmigrated.exit_code == 1 and "run `ketch db migrate`" in unmigrated.output
    assert "Traceback" not in unmigrated.output
    assert ketch("db", "migrate").exit_code == 0
    assert ketch("dags", "list").exit_code == 0
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", "postgresql://u:pw@127.0.0.1:1/x")
    get_settings.cache_clear()
    unreachable = ketch("dags", "list")
    assert unreachable.exit_code == 1
    assert unreachable.output.startswith("ketch: cannot reach the metadata database")
    assert len(unreachable.output.strip().splitlines()) == 1 and ":pw@" not in unreachable.output


def test_tasks_test_runs_a_task_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "hello.py").write_text(
        textwrap.dedent(
            """
            from ketch import dag, task, get_current_context

            @dag(schedule=None, params={"who": "world"})
            def hello():
                @task
                def greet():
                    ctx = get_current_context()
                    print(f"hello {ctx['params']['who']} at {ctx['ds']}")
                    return 42

                @task
                def broken():
                    raise ValueError("nope")

                greet() >> broken()

            hello()
            """
        )
    )
    monkeypatch.setenv("KETCH__CORE__DAGS_FOLDER", str(dags))
    get_settings.cache_clear()
    ok = ketch("tasks", "test", "hello", "greet", "--logical-date", "2026-01-02")
    assert ok.exit_code == 0, ok.output
    assert "hello world at 2026-01-02" in ok.output and "return value: 42" in ok.output
    failed = CliRunner().invoke(cli.cli, ["tasks", "test", "hello", "broken"])
    assert failed.exit_code == 1
    missing = ketch("tasks", "test", "nope", "greet")
    assert missing.exit_code == 1 and "DAG 'nope' not found" in missing.output


def test_task_run_does_not_import_the_web_or_database_stack() -> None:
    probe = textwrap.dedent(
        """
        import sys
        import ketch.worker.runner as runner
        heavy = ("sqlalchemy", "fastapi", "uvicorn", "alembic", "starlette", "ketch.db", "ketch.api")
        def fake_main(argv):
            loaded = sorted(m for m in sys.modules if m.startswith(heavy))
            print("ARGV", argv)
            print("HEAVY", loaded)
            return 0
        runner.main = fake_main
        from ketch.cli import main
        main(["task", "run", "d", "t", "r", "--try", "2", "--log-file", "/tmp/x.log"])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "ARGV ['d', 't', 'r', '--try', '2', '--log-file', '/tmp/x.log']" in proc.stdout
    assert "HEAVY []" in proc.stdout


def test_python_dash_m_ketch_works() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ketch", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "standalone" in proc.stdout


def test_tasks_test_runs_one_instance_of_a_mapped_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "mapped.py").write_text(
        textwrap.dedent(
            """
            from ketch import dag, task, get_current_context

            @dag(schedule=None)
            def mapped():
                @task(map_index_template="{{ task.op_kwargs['path'] }}")
                def load(path, table):
                    print(f"loading {path} into {table} as instance {get_current_context()['map_index']}")
                    return path

                @task
                def files():
                    return ["a", "b"]

                @task
                def plain():
                    return 1

                load.expand(path=["a.csv", "b.csv"], table=["t1", "t2"])
                load.override(task_id="over_upstream").expand(path=files(), table=["t"])
                plain()

            mapped()
            """
        )
    )
    monkeypatch.setenv("KETCH__CORE__DAGS_FOLDER", str(dags))
    get_settings.cache_clear()
    ok = ketch("tasks", "test", "mapped", "load", "2026-01-02", "--map-index", "2")
    assert ok.exit_code == 0, ok.output
    assert "loading b.csv into t1 as instance 2" in ok.output
    assert 'return value: "b.csv"' in ok.output and "rendered map index: b.csv" in ok.output
    # Airflow's messages for a missing or a needless map_index; the range of a literal.
    cases = {
        ("load",): "No map_index passed to mapped task",
        ("plain", "--map-index", "0"): "map_index passed to non-mapped task",
        ("load", "--map-index", "4"): "map_index 4 is out of range: task 'load' has 4 instances",
        ("over_upstream", "--map-index", "0"): "maps over the value of 'files'",
    }
    for args, message in cases.items():
        refused = ketch("tasks", "test", "mapped", *args)
        assert refused.exit_code == 1 and message in refused.output, refused.output
        assert "Traceback" not in refused.output
    twice = ketch("tasks", "test", "mapped", "plain", "2026-01-02", "--logical-date", "2026-01-02")
    assert twice.exit_code == 1 and "give the logical date once" in twice.output
