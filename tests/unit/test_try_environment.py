"""What a local task try can reach: a minimal environment (never the scheduler's secrets)
and owner-only log files."""

# ruff: noqa: F811  (pytest fixtures imported from _worker_support are parameters here)

from __future__ import annotations

import json
import os
import queue
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch.authoring._defaults import PARSE_DEFAULTS_ENV
from ketch.config import Settings, get_settings
from ketch.executors.base import TryEnded
from ketch.executors.local import LocalExecutor
from ketch.executors.try_environment import scheduler_secrets, try_environment
from ketch.serialization import SerializedDag, SerializedSchedule, SerializedTask
from ketch.worker.task_log import log_path, make_private_dirs, open_log_file
from tests.unit._worker_support import (  # noqa: F401 (fixtures)
    DAG_ID,
    RUN_ID,
    DagSetup,
    add_dag_and_run,
    api_server,
    api_url,
)

FERNET = "ZmDfcTF7_60GrrY167zsiPd67pEvs0aGOv2oasOM1Pg="
SECRETS = {
    "KETCH__CORE__FERNET_KEY": FERNET,
    "KETCH__API_AUTH__JWT_SECRET": "jwt-secret-of-the-scheduler-at-least-32-bytes",
    "KETCH__AUTH__SESSION_SECRET": "session-secret-of-the-scheduler",
    "KETCH__AUTH__OIDC_CLIENT_SECRET": "oidc-client-secret-value",
    "KETCH_API_TOKEN": "ketch_cli_token_value",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-of-the-scheduler",
    "AWS_ACCESS_KEY_ID": "AKIASCHEDULER",
}


def settings_with(passthrough: list[str] | None = None) -> Settings:
    """The current settings with ``[core] task_env_passthrough``."""
    settings = get_settings()
    if passthrough is None:
        return settings
    core = settings.core.model_copy(update={"task_env_passthrough": passthrough})
    return settings.model_copy(update={"core": core})


# -- the environment, as a function ----------------------------------------------------


def test_only_what_a_try_needs_is_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    environ = {
        **SECRETS,
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/k",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "PYTHONPATH": "/src",
        "VIRTUAL_ENV": "/venv",
        "TMPDIR": "/tmp/k",
        "HTTPS_PROXY": "http://proxy:3128",
        "NO_PROXY": "localhost",
        "KETCH_API_RETRY_TIMEOUT": "30",
        "KETCH_HOME": "/home/k/ketch",
        "KETCH_CONFIG": "/etc/ketch.toml",
        "KETCH__DATABASE__SQL_ALCHEMY_CONN": "postgresql://ketch:dbpass-1234@db/ketch",
        "KETCH__CORE__PARALLELISM": "8",
        "SOME_TOOL_SETTING": "x",
    }
    env, refused = try_environment(get_settings(), environ)
    assert refused == []
    assert json.loads(env.pop(PARSE_DEFAULTS_ENV))["default_task_retries"] == 0
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/k",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "PYTHONPATH": "/src",
        "VIRTUAL_ENV": "/venv",
        "TMPDIR": "/tmp/k",
        "HTTPS_PROXY": "http://proxy:3128",
        "NO_PROXY": "localhost",
        "KETCH_API_RETRY_TIMEOUT": "30",
    }


def test_passthrough_names_and_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", FERNET)
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", "postgresql://ketch:dbpass-1234@db/k")
    get_settings.cache_clear()
    settings = settings_with(
        [
            "AWS_SECRET_ACCESS_KEY",
            "TEAM_*",
            "KETCH__*",
            "KETCH_API_TOKEN",
            "KETCH_HOME",
            "KETCH_TEST_TAG",
            "COPY_*",
            "PGPASSWORD",
        ]
    )
    environ = {
        "AWS_SECRET_ACCESS_KEY": "named exactly: deliberate",
        "TEAM_REGION": "eu-west-1",
        "TEAM_DB_PASSWORD": "a pattern never sweeps in a secret-looking name",
        "TEAM_API_TOKEN": "nor this",
        "KETCH__CORE__FERNET_KEY": FERNET,
        "KETCH__CORE__PARALLELISM": "8",
        "KETCH_API_TOKEN": "ketch_x",
        "KETCH_HOME": "/home/k/ketch",
        "KETCH_TEST_TAG": "tag",
        "COPY_OF_THE_KEY": FERNET,
        "COPY_OF_THE_URL": "postgresql://ketch:dbpass-1234@db/k",
        "PGPASSWORD": "dbpass-1234",
        "UNLISTED": "no",
    }
    env, refused = try_environment(settings, environ)
    env.pop(PARSE_DEFAULTS_ENV)
    assert env == {
        "AWS_SECRET_ACCESS_KEY": "named exactly: deliberate",
        "TEAM_REGION": "eu-west-1",
        "KETCH_TEST_TAG": "tag",
    }
    assert refused == [
        "COPY_OF_THE_KEY",
        "COPY_OF_THE_URL",
        "KETCH_API_TOKEN",
        "KETCH_HOME",
        "KETCH__CORE__FERNET_KEY",
        "KETCH__CORE__PARALLELISM",
        "PGPASSWORD",
    ]


def test_passthrough_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__CORE__TASK_ENV_PASSTHROUGH", '["E2E_MARKS", "TEAM_*"]')
    get_settings.cache_clear()
    env, _ = try_environment(get_settings(), {"E2E_MARKS": "/m", "TEAM_A": "a", "OTHER": "o"})
    assert {k: v for k, v in env.items() if k != PARSE_DEFAULTS_ENV} == {
        "E2E_MARKS": "/m",
        "TEAM_A": "a",
    }


def test_coalescing_print_bursts_is_a_setting_the_try_receives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ketch.logs.pump.config import CONFIG_ENV, PumpConfig

    env, _ = try_environment(get_settings(), {})
    assert CONFIG_ENV not in env  # the default: the try coalesces
    monkeypatch.setenv("KETCH__LOGGING__COALESCE_PRINT_BURSTS", "false")
    get_settings.cache_clear()
    env, _ = try_environment(get_settings(), {})
    assert PumpConfig.from_env({}).coalesce is True
    monkeypatch.setenv(CONFIG_ENV, env[CONFIG_ENV])
    assert PumpConfig.from_env({}).coalesce is False


def test_scheduler_secrets_include_generated_keys(ketch_home: Path) -> None:
    (ketch_home / "jwt_secret").write_text("generated-jwt-key\n")
    (ketch_home / "fernet_key").write_text(FERNET + "\n")
    found = scheduler_secrets(get_settings())
    assert {"generated-jwt-key", FERNET} <= found


# -- owner-only logs -----------------------------------------------------------------------


def test_log_folders_and_files_are_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "home" / "logs" / "dag_id=d" / "run_id=r" / "task_id=t" / "attempt=1.log"
    os.close(open_log_file(target))
    for folder in (target.parent, tmp_path / "home" / "logs", tmp_path / "home"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    make_private_dirs(target.parent)  # exists: no error


# -- a real try through the local executor -------------------------------------------------

ENV_DAG = """
import json
import os
from datetime import datetime

from ketch import dag, task

AT_IMPORT = dict(os.environ)


@dag(dag_id="worker_test", schedule=None, start_date=datetime(2026, 1, 1))
def worker_test():
    @task
    def show_env():
        with open("/proc/self/environ", "rb") as fh:
            initial = [e.decode(errors="replace") for e in fh.read().split(b"\\0") if e]
        print("ENV " + json.dumps(
            {{"environ": dict(os.environ), "initial": initial, "at_import": AT_IMPORT}}
        ))
        return None

    show_env()


worker_test()
"""


@pytest.fixture
def env_dag(sqlite_engine: Engine, tmp_path: Path) -> DagSetup:
    folder = tmp_path / "dags"
    folder.mkdir()
    fileloc = folder / "env_dag.py"
    fileloc.write_text(ENV_DAG.format())
    dag = SerializedDag(
        dag_id=DAG_ID,
        fileloc=str(fileloc),
        relative_fileloc=fileloc.name,
        schedule=SerializedSchedule(kind="none"),
        tasks={"show_env": SerializedTask(task_id="show_env", kind="python")},
    )
    with Session(sqlite_engine) as session:
        add_dag_and_run(session, dag, RUN_ID, datetime.now(UTC))
        session.commit()
    return DagSetup(sqlite_engine, fileloc, tmp_path / "unused.pid")


@pytest.fixture
def secret_executor(
    api_url: str, monkeypatch: pytest.MonkeyPatch, ketch_home: Path
) -> Iterator[tuple[LocalExecutor, queue.Queue[TryEnded]]]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    # The database the execution API uses anyway, named in the scheduler's environment.
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{ketch_home / 'ketch.db'}")
    monkeypatch.setenv("TEAM_REGION", "eu-west-1")
    monkeypatch.setenv("UNLISTED_VARIABLE", "not passed")
    get_settings.cache_clear()
    events: queue.Queue[TryEnded] = queue.Queue()
    executor = LocalExecutor(settings_with(["TEAM_*"]))
    executor.start(events.put)
    yield executor, events
    executor.stop()


def test_a_try_never_sees_the_schedulers_secrets(
    secret_executor: tuple[LocalExecutor, queue.Queue[TryEnded]],
    env_dag: DagSetup,
    ketch_home: Path,
) -> None:
    executor, events = secret_executor
    db_url = os.environ["KETCH__DATABASE__SQL_ALCHEMY_CONN"]
    request = env_dag.queue_try("show_env")
    executor.launch(request)
    ended = events.get(timeout=30)
    log_file = log_path(get_settings().log_folder, request.key)
    text = log_file.read_text()
    assert ended.exit_code == 0, text
    line = next(line for line in text.splitlines() if line.startswith("ENV "))
    seen = json.loads(line[4:])
    environ = seen["environ"]
    # The try's own os.environ, what /proc/self/environ shows (the fork server's start-up
    # environment: a forked try inherits it) and what the DAG file saw when it was
    # imported (perhaps preloaded in the fork server): none holds a secret.
    initial = dict(entry.partition("=")[::2] for entry in seen["initial"])
    for seen_env in (environ, initial, seen["at_import"]):
        for name in (*SECRETS, "KETCH__DATABASE__SQL_ALCHEMY_CONN", "UNLISTED_VARIABLE"):
            assert name not in seen_env, name
        assert not [k for k in seen_env if k.startswith("KETCH__")]
        assert "KETCH_HOME" not in seen_env
        leaked = [k for k, v in seen_env.items() if db_url in v or v in SECRETS.values()]
        assert not leaked, leaked
    assert initial.get("PATH") == os.environ["PATH"]  # the allow-list, not an empty one
    assert environ.get("TEAM_REGION") == "eu-west-1"  # [core] task_env_passthrough
    assert environ.get("PATH") == os.environ["PATH"]
    assert environ["KETCH_TRY_TOKEN"] == request.token
    assert environ["KETCH_EXECUTION_API_URL"] == get_settings().execution_api_url
    # Owner-only: the file, its folders, the log folder.
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    folder = log_file.parent
    while folder != get_settings().log_folder.parent:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        folder = folder.parent
