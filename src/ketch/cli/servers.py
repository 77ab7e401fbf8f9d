"""``ketch standalone``, ``ketch scheduler``, ``ketch web`` and ``ketch db migrate``.

The commands that start servers bring the schema up to date first.
"""

from __future__ import annotations

import click

from ketch.cli._common import load_settings, migrated_engine


@click.command()
def standalone() -> None:
    """Scheduler, DAG processor and web server in one process (the embedded default)."""
    from ketch.standalone import run_standalone

    settings = load_settings()
    run_standalone(settings, migrated_engine(settings))


@click.command()
def scheduler() -> None:
    """The scheduler with its DAG processor and executor (no web server)."""
    from ketch.standalone import run_scheduler

    settings = load_settings()
    run_scheduler(settings, migrated_engine(settings))


@click.command()
@click.option("--host", default=None, help="Address to bind (default: [api] host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (default: [api] port, 8080).")
def web(host: str | None, port: int | None) -> None:
    """The web server: REST API and the execution API task tries talk to."""
    from ketch.standalone import run_web

    settings = load_settings()
    migrated_engine(settings)
    run_web(settings, host=host, port=port)


@click.group()
def db() -> None:
    """The metadata database."""


@db.command("migrate")
def db_migrate() -> None:
    """Create or upgrade the schema (idempotent)."""
    settings = load_settings()
    engine = migrated_engine(settings)
    click.echo(f"database {engine.url.render_as_string(hide_password=True)} is up to date")
