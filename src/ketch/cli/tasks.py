"""``ketch tasks``: a DAG's tasks and task instances (list, states, clear, mark, xcom, logs).

``ketch tasks test`` (run one task here, no database) is in :mod:`ketch.cli.task_test`.
"""

from __future__ import annotations

import sys

import click

from ketch.cli._common import CliError, emit, error_line, output_option
from ketch.cli.backends import Row, get_backend
from ketch.cli.task_test import tasks_test

MAP_INDEX_HELP = "The instance of a mapped task (-1: not mapped)."


@click.group()
def tasks() -> None:
    """A DAG's tasks and task instances: list, test, logs, xcom, clear, mark."""


tasks.add_command(tasks_test)


@tasks.command("list")
@click.argument("dag_id")
@output_option
def tasks_list(dag_id: str, output: str) -> None:
    """The tasks of a DAG in definition order."""
    rows = get_backend().list_tasks(dag_id)
    emit(output, rows, ("task_id", "kind", "upstream_task_ids", "trigger_rule", "retries"))


@tasks.command("states")
@click.argument("dag_id")
@click.argument("run_id")
@output_option
def tasks_states(dag_id: str, run_id: str, output: str) -> None:
    """The task instances of one run with their state and tries (JSON: the try history)."""
    rows = get_backend().list_task_instances(dag_id, run_id)
    for row in rows:
        if output == "table":  # the count; JSON keeps the REST API's history of each try
            row["tries"] = row["try_number"]
        row["error"] = error_line(row["error"] or "")
    columns = ("task_id", "map_index", "rendered_map_index", "state", "tries", "max_tries")
    emit(output, rows, (*columns, "error"))


@tasks.command("clear")
@click.argument("dag_id")
@click.argument("run_id")
@click.option("--task-id", "-t", "task_ids", multiple=True, help="Tasks to clear (default: all).")
@click.option("--downstream", "-d", is_flag=True, help="Also clear their downstream tasks.")
@click.option("--upstream", "-u", is_flag=True, help="Also clear their upstream tasks.")
@click.option("--only-failed", "-f", is_flag=True, help="Only failed or upstream_failed ones.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def tasks_clear(
    dag_id: str,
    run_id: str,
    task_ids: tuple[str, ...],
    downstream: bool,
    upstream: bool,
    only_failed: bool,
    yes: bool,
) -> None:
    """Clear task instances of a run so they run again (retries available again)."""
    backend = get_backend()

    def clear(dry_run: bool) -> list[Row]:
        return backend.clear_task_instances(
            dag_id,
            run_id,
            task_ids,
            downstream=downstream,
            upstream=upstream,
            only_failed=only_failed,
            dry_run=dry_run,
        )

    names = [f"{ti['task_id']} ({ti['state'] or 'none'})" for ti in clear(dry_run=True)]
    if not names:
        click.echo("nothing to clear")
        return
    click.echo("task instances to clear:\n  " + "\n  ".join(names))
    if not yes and not click.confirm("clear them?", default=False):
        raise CliError("nothing cleared")
    cleared = clear(dry_run=False)
    click.echo(f"cleared {len(cleared)} task instance(s) of run {run_id}")


@tasks.command("mark")
@click.argument("dag_id")
@click.argument("run_id")
@click.argument("task_id")
@click.option("--state", type=click.Choice(["success", "failed"]), required=True)
@click.option("--downstream", "-d", is_flag=True, help="Also mark its downstream tasks.")
@click.option(
    "--map-index",
    type=int,
    default=None,
    help="Only this instance of a mapped task (default: every instance).",
)
def tasks_mark(
    dag_id: str, run_id: str, task_id: str, state: str, downstream: bool, map_index: int | None
) -> None:
    """Set the state of a task instance (a running try is stopped), as Airflow's "mark as".

    Failed or upstream_failed tasks downstream of it are cleared so the run can go on.
    """
    altered = get_backend().mark_task_instance(
        dag_id, run_id, task_id, state, downstream=downstream, map_index=map_index
    )
    # As in Airflow, failed downstream tasks are cleared after the mark (so the run can
    # resume): with --downstream --state failed that includes the ones just marked.
    names = [ti["task_id"] for ti in altered if ti["state"] == state]
    cleared = [ti["task_id"] for ti in altered if ti["state"] != state]
    if not altered:
        click.echo(f"nothing to mark: already {state}")
        return
    click.echo(f"marked {len(names)} task instance(s) of run {run_id} {state}: {', '.join(names)}")
    if cleared:
        click.echo(f"cleared again as failed downstream tasks: {', '.join(cleared)}")


@tasks.command("xcom")
@click.argument("dag_id")
@click.argument("run_id")
@click.argument("task_id")
@click.option("--key", default="return_value", show_default=True, help="The XCom key.")
@click.option("--map-index", type=int, default=-1, show_default=True, help=MAP_INDEX_HELP)
def tasks_xcom(dag_id: str, run_id: str, task_id: str, key: str, map_index: int) -> None:
    """Print what a task instance returned (its XCom), as JSON.

    The value as stored and as ``GET .../xcomEntries/{key}`` returns it: JSON, with a
    datetime, Decimal, tuple or set in Airflow's tagged form (``__classname__``).
    """
    import json

    entry = get_backend().get_xcom(dag_id, run_id, task_id, key, map_index)
    click.echo(json.dumps(entry["value"], indent=2))


@tasks.command("logs")
@click.argument("dag_id")
@click.argument("run_id")
@click.argument("task_id")
@click.option("--try", "try_number", type=int, default=None, help="Try number (default: latest).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the try runs.")
@click.option("--map-index", type=int, default=-1, show_default=True, help=MAP_INDEX_HELP)
def tasks_logs(
    dag_id: str,
    run_id: str,
    task_id: str,
    try_number: int | None,
    follow: bool,
    map_index: int,
) -> None:
    """Print the log of a task try (with --follow, as it is written, until the try ends)."""
    backend = get_backend()
    latest = int(backend.get_task_instance(dag_id, run_id, task_id, map_index)["try_number"])
    number = try_number or latest
    if number < 1 or number > latest:
        raise CliError(f"task {task_id!r} of run {run_id!r} has no try {number} (tries: {latest})")
    out = sys.stdout.buffer
    if not follow:
        out.write(backend.read_log(dag_id, run_id, task_id, number, map_index))
        return
    for chunk in backend.follow_log(dag_id, run_id, task_id, number, map_index):
        out.write(chunk)
        out.flush()
