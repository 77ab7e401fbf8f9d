"""``ketch variables``, ``ketch connections`` and ``ketch rotate-fernet-key`` on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from sqlalchemy import Engine

from ketch.cli import cli
from ketch.config import get_settings


@pytest.fixture(autouse=True)
def _database_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the database backend: a KETCH_API_URL in the shell must not count."""
    monkeypatch.delenv("KETCH_API_URL", raising=False)
    monkeypatch.delenv("KETCH_API_TOKEN", raising=False)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_variables_commands(engine: Engine, tmp_path: Path) -> None:
    assert run("variables", "set", "env", "prod", "--description", "stage").exit_code == 0
    assert run("variables", "set", "pw", "hunter22", "--sensitive").exit_code == 0
    assert run("variables", "get", "env").output == "prod\n"
    assert run("variables", "get", "pw").output == "hunter22\n"
    listed = run("variables", "list")
    assert "env" in listed.output and "hunter22" not in listed.output and "***" in listed.output
    rows = json.loads(run("variables", "list", "-o", "json").output)
    assert {r["key"]: r["source"] for r in rows} == {"env": "(manual)", "pw": "(manual)"}
    missing = run("variables", "get", "nope")
    assert missing.exit_code == 1 and "not found" in missing.output
    assert run("variables", "get", "nope", "--default", "d").output == "d\n"
    bad_json = run("variables", "set", "j", "{oops", "--json")
    assert bad_json.exit_code == 1
    run("variables", "set", "j", '{"a": [1]}', "--json")
    assert json.loads(run("variables", "get", "j", "--json").output) == {"a": [1]}

    # Airflow's variables.json imports unchanged, and exports back the same.
    airflow_file = tmp_path / "variables.json"
    airflow_file.write_text(json.dumps({"a": "1", "b": {"x": 2}, "c": 3}))
    imported = run("variables", "import", str(airflow_file))
    assert imported.exit_code == 0 and "3 variables imported" in imported.output
    assert run("variables", "get", "b").output == '{"x": 2}\n'
    out = tmp_path / "out.json"
    assert run("variables", "export", str(out)).exit_code == 0
    exported = json.loads(out.read_text())
    assert exported["b"] == {"x": 2} and exported["c"] == 3
    assert exported["env"] == {"value": "prod", "description": "stage"}
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": ')
    result = run("variables", "import", str(broken))
    assert result.exit_code == 1 and "not valid JSON" in result.output
    assert run("variables", "import", str(tmp_path / "none.json")).exit_code == 1

    assert run("variables", "delete", "env").exit_code == 0
    assert run("variables", "delete", "env").exit_code == 1


def test_connections_commands(engine: Engine, tmp_path: Path) -> None:
    uri = "postgres://u:p%40w@db:5432/analytics?sslmode=require"
    assert run("connections", "add", "wh", "--conn-uri", uri).exit_code == 0
    again = run("connections", "add", "wh", "--conn-uri", uri)
    assert again.exit_code == 1 and "already exists" in again.output
    assert run("connections", "get", "wh", "-o", "uri").output.strip() == uri
    fields = json.loads(run("connections", "get", "wh").output)
    assert fields["password"] == "p@w" and fields["extra"] == '{"sslmode": "require"}'
    added = run(
        "connections",
        "add",
        "api",
        "--conn-type",
        "http",
        "--conn-host",
        "h",
        "--conn-port",
        "8080",
    )
    assert added.exit_code == 0
    both = run("connections", "add", "x", "--conn-uri", uri, "--conn-type", "http")
    assert both.exit_code == 1
    listed = run("connections", "list")
    assert "api" in listed.output and "p@w" not in listed.output
    out = tmp_path / "conns.json"
    assert run("connections", "export", str(out)).exit_code == 0
    data = json.loads(out.read_text())
    assert data["api"]["port"] == 8080 and data["wh"]["password"] == "p@w"
    assert run("connections", "delete", "wh").exit_code == 0
    assert run("connections", "delete", "wh").exit_code == 1
    result = run("connections", "import", str(out))
    assert result.exit_code == 0 and "2 connections imported" in result.output
    assert json.loads(run("connections", "get", "wh").output)["password"] == "p@w"


def test_rotate_fernet_key(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", old)
    get_settings.cache_clear()
    run("variables", "set", "v", "value")
    run("connections", "add", "c", "--conn-uri", "http://u:pw@h")
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", f"{new},{old}")
    get_settings.cache_clear()
    result = run("rotate-fernet-key")
    assert result.exit_code == 0 and "2 values re-encrypted" in result.output
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", new)
    get_settings.cache_clear()
    assert run("variables", "get", "v").output == "value\n"


def test_sync_once_and_sync_status(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "variables.json"
    good.write_text(json.dumps({"from_file": "yes"}))
    bad = tmp_path / "broken.json"
    bad.write_text('{"half": ')
    sources = [{"kind": "file", "path": str(good)}, {"kind": "file", "path": str(bad)}]
    monkeypatch.setenv("KETCH__VARIABLES__SYNC_SOURCES", json.dumps(sources))
    get_settings.cache_clear()
    result = run("variables", "sync", "--once", "-o", "json")
    assert result.exit_code == 1  # one source failed
    rows = {r["ok"]: r for r in json.loads(result.output)}
    assert rows[True]["managed_keys"] == 1 and rows[False]["last_error"]
    assert run("variables", "get", "from_file").output == "yes\n"
    status = json.loads(run("variables", "sync-status", "-o", "json").output)
    assert sorted(r["managed_keys"] for r in status) == [0, 1]
    assert "yes" not in run("variables", "sync-status").output
