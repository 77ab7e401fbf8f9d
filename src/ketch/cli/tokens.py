"""``ketch tokens``: API tokens for the CLI's remote mode and for automation.

``create`` prints the secret as the only line on stdout (``TOKEN=$(ketch tokens create
...)``) and everything else on stderr; the secret is not stored and cannot be shown
again. On the database the token is created by ``cli:<user>``; through the REST API
(an admin's token) by that token.
"""

from __future__ import annotations

import re
from datetime import timedelta

import click

from ketch.cli._common import CliError, emit, output_option, short_time
from ketch.cli.backends import get_backend

ROLE_CHOICES = ("viewer", "user", "op", "admin")  # ketch.auth.roles.ROLES (a test checks)
_DURATION = re.compile(r"(?P<amount>\d+)(?P<unit>[dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_expires(value: str) -> timedelta | None:
    """``90d``, ``12h``, ``30m`` or ``never`` (None)."""
    text = value.strip().lower()
    if text == "never":
        return None
    match = _DURATION.fullmatch(text)
    if match is None or int(match["amount"]) == 0:
        raise CliError(
            f"--expires: give a lifetime such as 90d, 12h or 30m, or never; not {value!r}"
        )
    return timedelta(**{_UNITS[match["unit"]]: int(match["amount"])})


@click.group()
def tokens() -> None:
    """API tokens (sent as 'Authorization: Bearer'): create, list, revoke."""


@tokens.command("create")
@click.option("--name", required=True, help="What the token is for, e.g. ci.")
@click.option("--role", type=click.Choice(ROLE_CHOICES), required=True, help="Its role.")
@click.option(
    "--expires",
    default="90d",
    show_default=True,
    help="Lifetime: 90d, 12h, 30m, or never.",
)
@click.option("--scope", "scopes", multiple=True, help="An extra scope, e.g. metrics.")
def tokens_create(name: str, role: str, expires: str, scopes: tuple[str, ...]) -> None:
    """Create a token; its secret is the only line on stdout (shown once, never again)."""
    lifetime = parse_expires(expires)
    row, secret = get_backend().create_token(
        name=name, role=role, expires_in=lifetime, scopes=scopes
    )
    until = short_time(row["expires_at"]) or "never"
    click.echo(
        f"created API token {row['id']} ({row['name']}, role {row['role']}, "
        f"expires {until}); its secret follows on stdout and is shown only this once",
        err=True,
    )
    click.echo(secret)


@tokens.command("list")
@output_option
def tokens_list(output: str) -> None:
    """Every token: name, role, scopes, created, expires, last used, revoked (no secrets)."""
    rows = get_backend().list_tokens()
    if output == "table":
        for row in rows:
            row["created"] = short_time(row["created_at"])
            row["expires"] = short_time(row["expires_at"]) or "never"
            row["last_used"] = short_time(row["last_used_at"])
            row["revoked"] = short_time(row["revoked_at"])
    emit(
        output,
        rows,
        ("id", "name", "role", "scopes", "created", "expires", "last_used", "revoked"),
    )


@tokens.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id: int) -> None:
    """Revoke a token at once: its next request gets 401."""
    row = get_backend().revoke_token(token_id)
    name = f" ({row['name']})" if row else ""
    click.echo(f"API token {token_id}{name} revoked")
