"""``ketch dags test``: one run of a DAG with every task in this process (``airflow dags test``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ketch.cli._common import CliError, load_settings, parse_conf, parse_datetime


@click.command("test")
@click.argument("dag_id")
@click.argument("logical_date", required=False)
@click.option("--conf", "-c", default=None, help="Run conf as a JSON object, e.g. '{\"n\": 3}'.")
@click.option(
    "--dags-folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to find the DAG (default: [core] dags_folder).",
)
@click.option(
    "--dagfile-path",
    "-f",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The DAG's file, read instead of searching the DAGs folder.",
)
def dags_test(
    dag_id: str,
    logical_date: str | None,
    conf: str | None,
    dags_folder: Path | None,
    dagfile_path: Path | None,
) -> None:
    """Run one DAG run here, every task in this process in dependency order, their logs on
    the terminal; exit 1 when the run fails (like `airflow dags test`).

    LOGICAL_DATE is ISO 8601 (default: now). The run is stored in the configured database
    when [database] sql_alchemy_conn is set, else in a throwaway SQLite database.
    """
    from ketch.authoring.loader import DagNotFound, load_dag
    from ketch.cli.task_test import _find_dag_file
    from ketch.dag_testing import DagTestError, run_dag_test
    from ketch.standalone import effective_dags_folder

    settings = load_settings()
    when = parse_datetime("LOGICAL_DATE", logical_date)
    conf_dict = parse_conf(conf)
    folder = (dags_folder or effective_dags_folder(settings)).expanduser().resolve()
    if dagfile_path is not None:
        try:
            dag = load_dag(str(dagfile_path.expanduser().resolve()), dag_id)
        except DagNotFound as exc:
            raise CliError(str(exc)) from exc
        folder = dags_folder.expanduser().resolve() if dags_folder else dagfile_path.parent
    else:
        dag = _find_dag_file(folder, dag_id)
    try:
        result = run_dag_test(
            dag, logical_date=when, conf=conf_dict, dags_folder=folder, settings=settings
        )
    except DagTestError as exc:
        raise CliError(str(exc)) from exc
    if result.state == "failed":
        click.echo("DagRun failed", err=True)
        sys.exit(1)
    if not result.succeeded:
        click.echo(f"DagRun did not finish: {', '.join(result.stuck)} cannot run", err=True)
        sys.exit(1)
