"""``ketch config show``: the effective configuration, secrets masked."""

from __future__ import annotations

import json
from typing import Any

import click

from ketch.cli._common import load_settings


@click.group()
def config() -> None:
    """The effective configuration."""


@config.command("show")
@click.option(
    "--output", "-o", type=click.Choice(["toml", "json"]), default="toml", show_default=True
)
def config_show(output: str) -> None:
    """Print the effective settings (file + KETCH__* environment), secrets masked."""
    data = load_settings().masked()
    if output == "json":
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(_as_toml(data), nl=False)


def _as_toml(data: dict[str, dict[str, Any]]) -> str:
    """TOML has no null: unset settings are listed as comments so every key shows."""
    import tomli_w

    parts = []
    for section, values in data.items():
        present = {k: v for k, v in values.items() if v is not None}
        body = tomli_w.dumps(present)
        unset = "".join(f"# {k} = (unset)\n" for k, v in values.items() if v is None)
        parts.append(f"[{section}]\n{body}{unset}")
    return "\n".join(parts)
