"""Secrets through the CLI's remote mode: values from stdin or a file (not argv), and
connections whose sensitive extra fields the REST API hides."""

# ruff: noqa: F811  (pytest fixtures imported from test_cli_remote are parameters here)

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_cli_remote import (  # noqa: F401 (fixtures)
    Both,
    _no_inherited_remote,
    both,
    db,
    local,
    server,
)


def test_variables_set_from_stdin_and_file_through_the_api(both: Both, tmp_path: Path) -> None:
    set_ = both.remote("variables", "set", "db_password", "-", input="hunter22\n")
    assert set_.exit_code == 0, set_.output
    assert local("variables", "get", "db_password").output == "hunter22\n"
    secret = tmp_path / "token"
    secret.write_text("tok-1\n")
    set_ = both.remote("variables", "set", "api_token", "--from-file", str(secret))
    assert set_.exit_code == 0, set_.output
    assert local("variables", "get", "api_token").output == "tok-1\n"
    kept = both.remote("variables", "set", "note", "-", "--keep-newline", input="n\n")
    assert kept.exit_code == 0 and local("variables", "get", "note").output == "n\n\n"
    assert both.remote("variables", "set", "k").exit_code == 2


def test_connection_password_from_stdin_through_the_api(both: Both, tmp_path: Path) -> None:
    added = both.remote(
        "connections",
        "add",
        "pg",
        "--conn-uri",
        "postgres://u@db:5432/app",
        "--password-stdin",
        input="pw-from-stdin\n",
    )
    assert added.exit_code == 0, added.output
    assert json.loads(local("connections", "get", "pg").output)["password"] == "pw-from-stdin"


def test_sensitive_extras_are_never_taken_for_the_secret(both: Both, tmp_path: Path) -> None:
    extra = '{"region": "eu", "api_key": "k-123", "nested": {"token": "t-9"}}'
    added = both.remote("connections", "add", "svc", "--conn-type", "http", "--conn-extra", extra)
    assert added.exit_code == 0, added.output
    listed = both.same("connections", "list", "-o", "json")  # the same masks on both
    assert "k-123" not in listed and "t-9" not in listed
    got = both.remote("connections", "get", "svc")
    assert json.loads(json.loads(got.stdout)["extra"]) == {
        "region": "eu",
        "api_key": "***",
        "nested": {"token": "***"},
    }
    assert "never returns passwords or sensitive extra values" in got.stderr
    no_uri = both.remote("connections", "get", "svc", "-o", "uri")
    assert no_uri.exit_code == 1 and "has sensitive extra fields" in no_uri.output
    refused = both.remote("connections", "export", str(tmp_path / "c.json"))
    assert refused.exit_code == 1 and "svc" in refused.output
    assert not (tmp_path / "c.json").exists()
    # Database access prints and exports the values.
    assert json.loads(local("connections", "get", "svc").output)["extra"] == extra
