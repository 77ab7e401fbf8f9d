"""``ketch tokens`` (create, list, revoke) and the CLI's remote mode behind authentication."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from ketch import cli
from ketch.cli.tokens import ROLE_CHOICES, parse_expires
from ketch.config import get_settings
from tests.unit.test_cli_remote import Both, WebServer, db, local  # noqa: F401 (fixture)


@pytest.fixture(autouse=True)
def _no_inherited_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KETCH_API_URL", raising=False)
    monkeypatch.delenv("KETCH_API_TOKEN", raising=False)


def create(*args: str) -> tuple[Result, str]:
    """``ketch tokens create ...`` on the database; the result and the secret."""
    result = CliRunner().invoke(cli.cli, ["tokens", "create", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result, result.stdout.strip()


def test_roles_offered_are_the_policys_roles() -> None:
    from ketch.auth.roles import ROLES

    assert ROLE_CHOICES == ROLES


def test_expires_accepts_days_hours_minutes_and_never() -> None:
    assert parse_expires("90d") == timedelta(days=90)
    assert parse_expires("12h") == timedelta(hours=12)
    assert parse_expires("30m") == timedelta(minutes=30)
    assert parse_expires("never") is None
    for bad in ("", "0d", "5x", "1.5d", "-1d", "d"):
        with pytest.raises(Exception, match="--expires"):
            parse_expires(bad)


def test_create_prints_only_the_secret_on_stdout(sqlite_engine: Engine) -> None:
    result, secret = create("--name", "ci", "--role", "op", "--scope", "metrics")
    assert result.stdout == f"{secret}\n" and secret.startswith("ketch_")
    assert "created API token 1 (ci, role op, expires 20" in result.stderr
    assert secret not in result.stderr
    rows = json.loads(local("tokens", "list", "-o", "json").output)
    (row,) = rows
    assert row["name"] == "ci" and row["role"] == "op" and row["scopes"] == ["metrics"]
    assert row["created_by"].startswith("cli:") and row["revoked_at"] is None
    expires = datetime.fromisoformat(row["expires_at"].replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(UTC) + timedelta(days=90))) < timedelta(minutes=1)
    assert secret not in json.dumps(rows)

    _, short = create("--name", "tmp", "--role", "viewer", "--expires", "12h")
    _, forever = create("--name", "bot", "--role", "admin", "--expires", "never")
    table = local("tokens", "list").output
    header, _rule, *lines = table.splitlines()
    assert header.split() == [
        "id",
        "name",
        "role",
        "scopes",
        "created",
        "expires",
        "last_used",
        "revoked",
    ]
    assert len(lines) == 3 and lines[2].split()[:3] == ["3", "bot", "admin"] and "never" in lines[2]
    assert short not in table and forever not in table

    assert local("tokens", "revoke", "2").output == "API token 2 (tmp) revoked\n"
    assert json.loads(local("tokens", "list", "-o", "json").output)[1]["revoked_at"] is not None
    missing = local("tokens", "revoke", "99")
    assert missing.exit_code == 1 and missing.output == "ketch: API token 99 does not exist\n"
    bad_role = CliRunner().invoke(cli.cli, ["tokens", "create", "--name", "x", "--role", "root"])
    assert bad_role.exit_code == 2
    bad_scope = CliRunner().invoke(
        cli.cli, ["tokens", "create", "--name", "x", "--role", "op", "--scope", "everything"]
    )
    assert bad_scope.exit_code == 1 and "unknown scope" in bad_scope.output


@pytest.fixture
def signed_in_server(db: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebServer]:  # noqa: F811
    """A web server with an identity provider configured: loopback is no longer admin, so
    every API call needs a token (as on a shared deployment)."""
    monkeypatch.setenv("KETCH__AUTH__OIDC_CLIENT_ID", "ketch-test")
    monkeypatch.setenv("KETCH__AUTH__OIDC_CLIENT_SECRET", "not-a-real-secret")
    get_settings.cache_clear()
    with WebServer(get_settings()) as web:
        yield web


def test_remote_mode_with_tokens(
    signed_in_server: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = Both(signed_in_server.url, monkeypatch)
    anonymous = both.remote("dags", "list")
    assert anonymous.exit_code == 1
    assert anonymous.output.startswith(
        "ketch: not authenticated: KETCH_API_TOKEN missing, expired or revoked"
    )
    assert len(anonymous.output.splitlines()) == 1

    _, viewer = create("--name", "ci", "--role", "viewer")
    listed = both.remote("dags", "list", token=viewer)
    assert listed.exit_code == 0 and listed.output == local("dags", "list").output
    refused = both.remote("dags", "trigger", "etl", token=viewer)
    assert refused.exit_code == 1
    assert refused.output == (
        "ketch: forbidden: your token's role viewer may not POST /api/v1/dags/etl/dagRuns "
        "(needs user)\n"
    )
    assert viewer not in refused.output
    assert both.remote("variables", "list", token=viewer).exit_code == 1  # op and above

    _, admin = create("--name", "admin", "--role", "admin")
    remote_list = both.remote("tokens", "list", "-o", "json", token=admin)
    assert (
        remote_list.exit_code == 0
        and remote_list.output == local("tokens", "list", "-o", "json").output
    )
    made = both.remote("tokens", "create", "--name", "deploy", "--role", "user", token=admin)
    assert made.exit_code == 0, made.output
    deploy = made.stdout.strip()
    assert deploy.startswith("ketch_") and made.stdout == f"{deploy}\n"
    row = json.loads(local("tokens", "list", "-o", "json").output)[-1]
    assert row["name"] == "deploy" and row["created_by"] == "token:admin"
    hours = both.remote(
        "tokens", "create", "--name", "x", "--role", "user", "--expires", "12h", token=admin
    )
    assert hours.exit_code == 1 and "whole days" in hours.output
    assert (
        both.remote("dags", "trigger", "etl", "--run-id", "by-deploy", token=deploy).exit_code == 0
    )

    revoked = both.remote("tokens", "revoke", "1", token=admin)
    assert revoked.output == "API token 1 (ci) revoked\n"
    after = both.remote("dags", "list", token=viewer)
    assert after.exit_code == 1
    assert after.output == (
        "ketch: not authenticated: KETCH_API_TOKEN missing, expired or revoked "
        "(API token 'ci' was revoked)\n"
    )
    assert viewer not in after.output
    garbage = both.remote("dags", "list", token="not-a-token")
    assert garbage.exit_code == 1 and "not authenticated" in garbage.output
    assert "not-a-token" not in garbage.output
