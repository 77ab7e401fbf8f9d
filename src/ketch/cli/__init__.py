"""The ``ketch`` command: one module per resource, registered on the ``cli`` group here.

Every import beyond click and the standard library happens inside the command
that needs it: ``ketch task run`` starts for every task try and must not pay for
(or depend on) the web and database stack; a test checks ``sys.modules``.

Commands that read or change state go through :mod:`ketch.operations` directly
on the database (the same functions the REST API calls). Only the commands that
start servers, and ``ketch db migrate``, migrate the schema; the others say to
run ``ketch db migrate`` when the schema is missing or old. A database that
cannot be reached is one line on stderr and exit code 1, never a traceback.

Modules: :mod:`._common` (errors, settings, database session, output) is imported by
the resource modules (``servers``, ``dags``, ``tasks``, ``pools``, ``variables``,
``connections``, ``config``, ``task``), which this package imports to register
their groups; none of them imports this package, so there is no import cycle.
"""

from __future__ import annotations

import click

from ketch.cli import config, connections, dags, pools, servers, task, tasks, variables


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ketch", prog_name="ketch")
def cli() -> None:
    """ketch: Airflow-style DAGs, one process or pod per task try."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``ketch``, ``python -m ketch``)."""
    cli.main(args=argv, prog_name="ketch")


for _command in (
    servers.standalone,
    servers.scheduler,
    servers.web,
    servers.db,
    dags.dags,
    tasks.tasks,
    pools.pools,
    task.task,
    config.config,
    variables.variables,
    connections.connections,
    variables.rotate_fernet_key,
):
    cli.add_command(_command)

__all__ = ["cli", "main"]
