"""``ketch tasks``: a DAG's tasks and task instances (list, states, clear, mark, logs).

``ketch tasks test`` (run one task here, no database) is in :mod:`ketch.cli.task_test`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ketch.cli._common import CliError, db_session, emit, error_line, load_settings, output_option
from ketch.cli.task_test import tasks_test

LOG_POLL_SECONDS = 0.25


@click.group()
def tasks() -> None:
    """A DAG's tasks and task instances: list, test, logs, clear, mark."""


@tasks.command("list")
@click.argument("dag_id")
@output_option
def tasks_list(dag_id: str, output: str) -> None:
    """The tasks of a DAG in definition order."""
    from ketch import operations
    from ketch.api.schemas import TaskResponse

    with db_session() as session:
        serialized = operations.serialized_dag(operations.get_dag(session, dag_id))
    rows = [
        TaskResponse.from_serialized(t).model_dump(mode="json") for t in serialized.tasks.values()
    ]
    emit(output, rows, ("task_id", "kind", "upstream_task_ids", "trigger_rule", "retries"))


@tasks.command("states")
@click.argument("dag_id")
@click.argument("run_id")
@output_option
def tasks_states(dag_id: str, run_id: str, output: str) -> None:
    """The task instances of one run with their state and tries."""
    from ketch import operations
    from ketch.api.schemas import TaskInstanceResponse

    with db_session() as session:
        tis = operations.list_task_instances(session, dag_id, run_id)
        rows = [TaskInstanceResponse.from_model(ti).model_dump(mode="json") for ti in tis]
    for row in rows:
        row["tries"] = row["try_number"]
        row["error"] = error_line(row["error"] or "")
    emit(output, rows, ("task_id", "state", "tries", "max_tries", "error"))


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
    from ketch import operations

    kwargs: dict[str, Any] = {
        "include_downstream": downstream,
        "include_upstream": upstream,
        "only_failed": only_failed,
    }
    with db_session() as session:
        preview = operations.clear_task_instances(
            session, dag_id, run_id, list(task_ids) or None, dry_run=True, **kwargs
        )
        names = [f"{ti.task_id} ({ti.state or 'none'})" for ti in preview]
    if not names:
        click.echo("nothing to clear")
        return
    click.echo("task instances to clear:\n  " + "\n  ".join(names))
    if not yes and not click.confirm("clear them?", default=False):
        raise CliError("nothing cleared")
    with db_session() as session:
        cleared = operations.clear_task_instances(
            session, dag_id, run_id, list(task_ids) or None, **kwargs
        )
    click.echo(f"cleared {len(cleared)} task instance(s) of run {run_id}")


@tasks.command("mark")
@click.argument("dag_id")
@click.argument("run_id")
@click.argument("task_id")
@click.option("--state", type=click.Choice(["success", "failed"]), required=True)
@click.option("--downstream", "-d", is_flag=True, help="Also mark its downstream tasks.")
def tasks_mark(dag_id: str, run_id: str, task_id: str, state: str, downstream: bool) -> None:
    """Set the state of a task instance (a running try is stopped), as Airflow's "mark as".

    Failed or upstream_failed tasks downstream of it are cleared so the run can go on.
    """
    from ketch import operations

    with db_session() as session:
        operations.get_task_instance(session, dag_id, run_id, task_id)  # names what is missing
        altered = operations.set_task_instance_state(
            session, dag_id, run_id, task_id, state, include_downstream=downstream
        )
        # As in Airflow, failed downstream tasks are cleared after the mark (so the run can
        # resume): with --downstream --state failed that includes the ones just marked.
        names = [ti.task_id for ti in altered if ti.state == state]
        cleared = [ti.task_id for ti in altered if ti.state != state]
    if not altered:
        click.echo(f"nothing to mark: already {state}")
        return
    click.echo(f"marked {len(names)} task instance(s) of run {run_id} {state}: {', '.join(names)}")
    if cleared:
        click.echo(f"cleared again as failed downstream tasks: {', '.join(cleared)}")


@tasks.command("logs")
@click.argument("dag_id")
@click.argument("run_id")
@click.argument("task_id")
@click.option("--try", "try_number", type=int, default=None, help="Try number (default: latest).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the try runs.")
def tasks_logs(
    dag_id: str, run_id: str, task_id: str, try_number: int | None, follow: bool
) -> None:
    """Print the log of a task try."""
    from ketch import operations
    from ketch.executors.base import TryKey
    from ketch.worker.task_log import log_path

    with db_session() as session:
        ti = operations.get_task_instance(session, dag_id, run_id, task_id)
        ti_id, latest = ti.id, ti.try_number
    number = try_number or latest
    if number < 1 or number > latest:
        raise CliError(f"task {task_id!r} of run {run_id!r} has no try {number} (tries: {latest})")
    path = log_path(load_settings().log_folder, TryKey(dag_id, run_id, task_id, number))
    if not follow:
        if not path.is_file():
            raise CliError(f"no log for try {number} of task {task_id!r} (looked in {path})")
        sys.stdout.buffer.write(path.read_bytes())
        return
    _follow_file(path, lambda: _try_is_live(ti_id, number))


def _try_is_live(ti_id: int, try_number: int) -> bool:
    from ketch.db.models import TaskInstance
    from ketch.states import TaskInstanceState

    with db_session() as session:
        ti = session.get(TaskInstance, ti_id)
        live = (TaskInstanceState.QUEUED, TaskInstanceState.RUNNING)
        return ti is not None and ti.try_number == try_number and ti.state in live


def _follow_file(path: Path, is_live: Callable[[], bool]) -> None:
    """Copy ``path`` to stdout as it grows, until the try is over and all of it is printed."""
    offset = 0
    while True:
        live = is_live()  # asked before reading, so the last read sees everything written
        chunk = _read_from(path, offset)
        while chunk:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            offset += len(chunk)
            chunk = _read_from(path, offset)
        if not live:
            return
        time.sleep(LOG_POLL_SECONDS)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(65536)
    except FileNotFoundError:
        return b""


tasks.add_command(tasks_test)
