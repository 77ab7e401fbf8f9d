"""``ketch pools``: list, create or resize, delete pools."""

from __future__ import annotations

import click

from ketch.cli._common import emit, output_option
from ketch.cli.backends import get_backend


@click.group()
def pools() -> None:
    """Pools: how many slots their task instances may take at once."""


@pools.command("list")
@output_option
def pools_list(output: str) -> None:
    """Every pool with its slots, occupied (queued + running) and open slots."""
    rows = get_backend().list_pools()
    emit(output, rows, ("name", "slots", "occupied_slots", "open_slots", "description"))


@pools.command("set")
@click.argument("name")
@click.argument("slots", type=int)
@click.option("--description", default=None, help="What the pool is for (default: unchanged).")
def pools_set(name: str, slots: int, description: str | None) -> None:
    """Create a pool or change its slots."""
    backend = get_backend()
    existed = backend.pool_exists(name)
    backend.set_pool(name, slots, description)
    click.echo(f"pool {name} {'updated' if existed else 'created'}: {slots} slots")


@pools.command("delete")
@click.argument("name")
def pools_delete(name: str) -> None:
    """Delete a pool (not the default pool)."""
    get_backend().delete_pool(name)
    click.echo(f"pool {name} deleted")
