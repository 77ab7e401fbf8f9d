"""``ketch pools``: list, create or resize, delete pools."""

from __future__ import annotations

import click

from ketch.cli._common import db_session, emit, output_option


@click.group()
def pools() -> None:
    """Pools: how many slots their task instances may take at once."""


@pools.command("list")
@output_option
def pools_list(output: str) -> None:
    """Every pool with its slots, occupied (queued + running) and open slots."""
    from ketch import operations
    from ketch.api.schemas import PoolResponse

    with db_session() as session:
        rows = [
            PoolResponse.from_stats(p).model_dump(mode="json")
            for p in operations.list_pools(session)
        ]
    emit(output, rows, ("name", "slots", "occupied_slots", "open_slots", "description"))


@pools.command("set")
@click.argument("name")
@click.argument("slots", type=int)
@click.option("--description", default=None, help="What the pool is for (default: unchanged).")
def pools_set(name: str, slots: int, description: str | None) -> None:
    """Create a pool or change its slots."""
    from ketch import operations
    from ketch.db.models import Pool

    with db_session() as session:
        existed = session.get(Pool, name) is not None
        operations.set_pool(session, name, slots, description)
    click.echo(f"pool {name} {'updated' if existed else 'created'}: {slots} slots")


@pools.command("delete")
@click.argument("name")
def pools_delete(name: str) -> None:
    """Delete a pool (not the default pool)."""
    from ketch import operations

    with db_session() as session:
        operations.delete_pool(session, name)
    click.echo(f"pool {name} deleted")
