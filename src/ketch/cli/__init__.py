"""The ``ketch`` command: one module per resource, registered on the ``cli`` group here.

Every import beyond click and the standard library happens inside the command
that needs it: ``ketch task run`` starts for every task try and must not pay for
(or depend on) the web and database stack; a test checks ``sys.modules``.

Commands that read or change state go through a backend (:mod:`ketch.cli.backends`):
:mod:`ketch.operations` directly on the database (the same functions the REST API
calls), or the REST API of a ketch web server when ``KETCH_API_URL`` / ``--api-url``
is set (with ``KETCH_API_TOKEN`` / ``--token``). Only the commands that
start servers, and ``ketch db migrate``, migrate the schema; the others say to
run ``ketch db migrate`` when the schema is missing or old. A database that
cannot be reached is one line on stderr and exit code 1, never a traceback.

Modules: :mod:`._common` (errors, settings, database session, output) is imported by
the resource modules (``servers``, ``dags``, ``tasks``, ``pools``, ``variables``,
``connections``, ``tokens``, ``config``, ``task``; ``backends`` for the database or
REST API behind them), which this package imports to register
their groups; none of them imports this package, so there is no import cycle.
"""

from __future__ import annotations

import click

from ketch.cli import config, connections, dags, pools, servers, task, tasks, tokens, variables
from ketch.cli.backends import RemoteTarget


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ketch", prog_name="ketch")
@click.option(
    "--api-url",
    envvar="KETCH_API_URL",
    metavar="URL",
    default=None,
    help="Work through this ketch web server's REST API instead of the metadata database "
    "[env: KETCH_API_URL].",
)
@click.option(
    "--token",
    envvar="KETCH_API_TOKEN",
    metavar="TOKEN",
    default=None,
    help="API token for --api-url, sent as 'Authorization: Bearer' [env: KETCH_API_TOKEN; "
    "prefer it: options show in process lists].",
)
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, token: str | None) -> None:
    """ketch: Airflow-style DAGs, one process or pod per task try.

    The commands on DAGs, runs, tasks, pools, variables, connections and tokens work on
    the metadata database, or, with KETCH_API_URL (and KETCH_API_TOKEN) set, through a
    ketch web server's REST API, with no database credentials.
    """
    if api_url:
        ctx.obj = RemoteTarget(api_url, token)


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
    tokens.tokens,
    variables.rotate_fernet_key,
):
    cli.add_command(_command)

__all__ = ["cli", "main"]
