"""Settings a new user gets wrong: one line that says where the bad value came from (the
environment variable, or the TOML file and line), never a traceback; unknown keys warned
about with the nearest valid name; a missing DAGs folder warned about at start;
``ketch config show`` with every section populated."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import ketch.config
from ketch import cli

SECRETS = ("fernet-secret", "hunter2", "jwt-secret", "oidc-secret", "session-secret")

EVERY_SECTION = """\
[core]
dags_folder = "/srv/dags"
parallelism = 8
fernet_key = "fernet-secret"
default_task_execution_timeout = 600.0

[database]
sql_alchemy_conn = "postgresql://ketch:hunter2@db/ketch"
connect_timeout = 5.0

[scheduler]
lease_ttl = 8.0

[dag_processor]
refresh_interval = 60.0

[api]
host = "0.0.0.0"
execution_port = 8081
base_url = "https://ketch.corp.com"

[api_auth]
jwt_secret = "jwt-secret"

[auth]
oidc_client_id = "client-id"
oidc_client_secret = "oidc-secret"
session_secret = "session-secret"
allowed_domains = ["corp.com", "corp.io"]
role_rules = [
    { email = "lead@corp.com", role = "admin" },
    { domain = "corp.com", role = "viewer" },
]
default_role = "viewer"
trusted_proxies = ["10.0.0.0/8"]

[logging]
logging_level = "DEBUG"
remote_base_log_folder = "s3://bucket/logs"

[variables]
conflict_policy = "keep_manual"
sync_sources = [
    { kind = "file", path = "/etc/ketch/variables.json" },
    { kind = "aws-secrets-manager", id = "team", name_prefix = "ketch/", tags = { team = "data" } },
    { kind = "aws-secrets-manager", secret_id = "ketch/prod", region = "eu-west-1" },
]

[kubernetes]
namespace = "ketch"
pod_template_file = "/etc/ketch/pod.yaml"
"""


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    """Warnings are given once per process; every test starts with none given."""
    ketch.config._warned.clear()
    yield
    ketch.config._warned.clear()


def ketch_cli(*args: str) -> Result:
    return CliRunner().invoke(cli.cli, list(args))


def assert_one_line_error(result: Result, *expected: str) -> str:
    """Exit code 1, one ``ketch: ...`` line on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ketch: ") and "Traceback" not in result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__CORE__PARALLELISM", "abc")
    line = assert_one_line_error(ketch_cli("config", "show"))
    assert line.startswith(
        "ketch: KETCH__CORE__PARALLELISM=abc: [core] parallelism: Input should be a valid integer"
    )


def test_bad_toml_value_names_the_file_and_line(ketch_home: Path) -> None:
    path = ketch_home / "ketch.toml"
    path.write_text('# settings\n[core]\ndags_folder = "/srv/dags"\nparallelism = "abc"\n')
    line = assert_one_line_error(ketch_cli("dags", "list"))
    assert line.startswith(f'ketch: {path} line 4: [core] parallelism = "abc": Input should be')


def test_every_bad_value_is_its_own_line(ketch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (ketch_home / "ketch.toml").write_text(
        '[auth]\nrole_rules = [{ email = "a@corp.com", role = "boss" }]\n'
        '[[variables.sync_sources]]\nkind = "file"\n'
    )
    monkeypatch.setenv("KETCH__API__PORT", "99999")
    result = ketch_cli("config", "show")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert set(result.stderr.splitlines()) == {
        "ketch: KETCH__API__PORT=99999: [api] port: Input should be less than or equal to 65535",
        f'ketch: {ketch_home / "ketch.toml"} line 2: [auth] role_rules[0].role = "boss": '
        "Input should be 'viewer', 'user', 'op' or 'admin'",
        f"ketch: {ketch_home / 'ketch.toml'} line 3: [variables] sync_sources[0].path: "
        "Field required",
    }


def test_a_list_that_is_not_json_says_how_to_write_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__AUTH__ALLOWED_DOMAINS", "corp.com,corp.io")
    assert_one_line_error(
        ketch_cli("config", "show"),
        "KETCH__AUTH__ALLOWED_DOMAINS=corp.com,corp.io: [auth] allowed_domains: not JSON",
        'write a JSON list, e.g. ["corp.com", "corp.io"]',
    )


def test_malformed_toml_names_line_and_column(ketch_home: Path) -> None:
    path = ketch_home / "ketch.toml"
    path.write_text("[core]\nparallelism = 4\n[api\nport = 9000\n")
    assert_one_line_error(
        ketch_cli("config", "show"),
        f"ketch: {path} line 3, column 5: not valid TOML: Expected ']'",
    )


def test_missing_explicit_config_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KETCH_CONFIG", str(tmp_path / "nope.toml"))
    assert_one_line_error(ketch_cli("config", "show"), f"KETCH_CONFIG={tmp_path}/nope.toml")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysqlx://ketch:hunter2@db/ketch", "unknown database URL scheme 'mysqlx':"),
        ("postgres://ketch:hunter2@db/ketch", "'postgres' (did you mean postgresql?)"),
        ("ketch:hunter2@db/ketch", "not a database URL"),
    ],
)
def test_unknown_database_scheme_says_which_work(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", url)
    line = assert_one_line_error(
        ketch_cli("db", "migrate"),
        "ketch: KETCH__DATABASE__SQL_ALCHEMY_CONN=***: [database] sql_alchemy_conn: ",
        expected,
        "sqlite:///PATH and postgresql://",
        "postgresql+psycopg",
    )
    assert "hunter2" not in line  # the URL holds a password: never echoed
    with pytest.raises(ketch.config.SettingsError) as info:  # nor in a logged traceback
        ketch.config.load_settings()
    assert "hunter2" not in "".join(traceback.format_exception(info.value))


def test_engine_refuses_an_unknown_scheme_in_one_line() -> None:
    from ketch.db.engine import DatabaseUrlError, make_engine

    with pytest.raises(DatabaseUrlError, match="unknown database URL scheme 'mysqlx'") as info:
        make_engine("mysqlx://ketch:hunter2@db/ketch")
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DatabaseUrlError, match="not a valid database URL"):
        make_engine("postgresql://ketch:hunter2@db:port/ketch")


def test_unknown_environment_variable_is_warned_with_a_suggestion(ketch_home: Path) -> None:
    """A real process: the warning must reach a user's terminal, not only a log handler."""
    env = {
        **os.environ,
        "KETCH_HOME": str(ketch_home),
        "KETCH__CORE__PARALELISM": "8",
        "KETCH__CORE__PORT": "9000",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ketch", "config", "show", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "unknown setting KETCH__CORE__PARALELISM (ignored): did you mean KETCH__CORE__PARALLELISM?",
        "unknown setting KETCH__CORE__PORT (ignored): did you mean KETCH__API__PORT?",
    ]
    assert json.loads(done.stdout)["core"]["parallelism"] == 32  # ignored, not applied


def test_unknown_toml_keys_are_warned_with_a_suggestion(
    ketch_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = ketch_home / "ketch.toml"
    path.write_text(
        'executor = "local"\n[core]\ndag_folder = "/srv/dags"\nParallelism = 4\n[databse]\n'
    )
    with caplog.at_level(logging.WARNING, logger="ketch.config"):
        result = ketch_cli("config", "show")
        ketch.config.get_settings.cache_clear()
        ketch_cli("config", "show")  # once per process, not once per load
    assert result.exit_code == 0, result.output
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} line 1: unknown setting executor outside any [section] (ignored): "
        "did you mean [core] executor?",
        f"{path} line 3: unknown setting [core] dag_folder (ignored): "
        "did you mean [core] dags_folder?",
        f"{path} line 4: unknown setting [core] Parallelism (ignored): "
        "did you mean [core] parallelism?",
        f"{path} line 5: unknown section [databse] (ignored): did you mean [database]?",
    ]


def test_missing_dags_folder_is_warned_at_scheduler_start(ketch_home: Path) -> None:
    missing = ketch_home / "dags"  # a typo, or a git-sync volume not mounted
    env = {**os.environ, "KETCH_HOME": str(ketch_home), "KETCH__CORE__DAGS_FOLDER": str(missing)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ketch", "scheduler"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "DAGs from" in line:  # the start-up line comes after the warning
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    warnings = [line for line in seen if "WARNING" in line]
    assert len(warnings) == 1, seen
    assert f"[core] dags_folder {missing}: no such folder" in warnings[0]


def test_config_show_with_every_section_populated(ketch_home: Path) -> None:
    (ketch_home / "ketch.toml").write_text(EVERY_SECTION)
    as_toml = ketch_cli("config", "show")
    as_json = ketch_cli("config", "show", "-o", "json")
    assert as_toml.exit_code == 0 and as_json.exit_code == 0, as_toml.output + as_json.output
    for output in (as_toml.stdout, as_json.stdout):
        assert not any(secret in output for secret in SECRETS)
    shown = json.loads(as_json.stdout)
    assert shown["auth"]["role_rules"] == [
        {"email": "lead@corp.com", "domain": None, "role": "admin"},
        {"email": None, "domain": "corp.com", "role": "viewer"},
    ]
    assert shown["auth"]["allowed_domains"] == ["corp.com", "corp.io"]
    assert [s["kind"] for s in shown["variables"]["sync_sources"]] == [
        "file",
        "aws-secrets-manager",
        "aws-secrets-manager",
    ]
    for section, key in [
        ("core", "fernet_key"),
        ("database", "sql_alchemy_conn"),
        ("api_auth", "jwt_secret"),
        ("auth", "oidc_client_secret"),
        ("auth", "session_secret"),
    ]:
        assert shown[section][key] == "***"

    # The TOML output reads back as the same settings (TOML has no null: unset keys are
    # comments, unset keys of a list entry are left out), lists of tables under their section.
    def without_nulls(value: object) -> object:
        if isinstance(value, dict):
            return {k: without_nulls(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [without_nulls(v) for v in value]
        return value

    assert tomllib.loads(as_toml.stdout) == without_nulls(shown)
    assert "# base_log_folder = (unset)" in as_toml.stdout
    assert set(shown) == set(ketch.config.Settings.model_fields)
