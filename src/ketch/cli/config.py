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
    """TOML has no null: unset settings are listed as comments so every key shows; unset
    keys inside a list entry (a role rule's ``domain``, a sync source's ``id``) are left out.
    Each section is dumped whole, so a list of tables reads back under its section."""
    import tomli_w

    parts = []
    for section, values in data.items():
        present = {k: _without_nulls(v) for k, v in values.items() if v is not None}
        lines = tomli_w.dumps({section: present}).splitlines(keepends=True) or [f"[{section}]\n"]
        if not lines[0].startswith(f"[{section}]"):  # only sub-tables: no header of its own
            lines.insert(0, f"[{section}]\n")
        # The section's own keys end where its first sub-table (and the blank line) starts.
        own = next((i for i, ln in enumerate(lines) if i and ln.startswith("[")), len(lines))
        while own > 1 and not lines[own - 1].strip():
            own -= 1
        unset = [f"# {k} = (unset)\n" for k, v in values.items() if v is None]
        parts.append("".join(lines[:own] + unset + lines[own:]))
    return "\n".join(parts)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
