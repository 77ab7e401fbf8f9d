"""``ketch dags``: list, trigger (and follow), pause DAGs; their runs and import errors."""

from __future__ import annotations

import json
import sys
import time

import click

from ketch.cli._common import (
    db_session,
    emit,
    error_line,
    output_option,
    parse_conf,
    parse_datetime,
    short_time,
)

WAIT_POLL_SECONDS = 0.5


@click.group()
def dags() -> None:
    """List, trigger, pause DAGs; their runs (mark, cancel) and import errors."""


@dags.command("list")
@output_option
@click.option("--paused/--unpaused", default=None, help="Only paused (or unpaused) DAGs.")
@click.option("--tag", "tags", multiple=True, help="Only DAGs with any of these tags.")
def dags_list(output: str, paused: bool | None, tags: tuple[str, ...]) -> None:
    """The DAGs, with their schedule, last run and next run."""
    from ketch import operations
    from ketch.api.schemas import DagResponse

    with db_session() as session:
        page = operations.list_dags(session, paused=paused, tags=list(tags) or None)
        rows = [
            DagResponse.from_model(s.dag, s.last_run).model_dump(mode="json") for s in page.items
        ]
    for row in rows:
        row["paused"] = "yes" if row["is_paused"] else "no"
        row["next_run"] = short_time(row["next_dagrun_run_after"])
        row["last_run"] = row["last_run_state"]
    emit(output, rows, ("dag_id", "paused", "timetable_summary", "tags", "last_run", "next_run"))


@dags.command("runs")
@click.argument("dag_id")
@output_option
@click.option("--state", default=None, help="Only runs in this state.")
@click.option("--limit", type=int, default=25, show_default=True)
def dags_runs(dag_id: str, output: str, state: str | None, limit: int) -> None:
    """The runs of a DAG, newest first."""
    from ketch import operations
    from ketch.api.schemas import DagRunResponse

    with db_session() as session:
        page = operations.list_dag_runs(session, dag_id, state=state, limit=limit)
        rows = [DagRunResponse.from_model(r).model_dump(mode="json") for r in page.items]
    for row in rows:
        row["run_after"] = short_time(row["run_after"]) if output == "table" else row["run_after"]
        row["logical_date"] = (
            short_time(row["logical_date"]) if output == "table" else row["logical_date"]
        )
    emit(output, rows, ("dag_run_id", "run_type", "state", "logical_date", "run_after"))


@dags.command("errors")
@output_option
def dags_errors(output: str) -> None:
    """DAG files that failed to import, with the error."""
    from ketch import operations
    from ketch.api.schemas import ImportErrorResponse

    with db_session() as session:
        page = operations.list_import_errors(session)
        rows = [ImportErrorResponse.from_model(e).model_dump(mode="json") for e in page.items]
    if output == "table":
        for row in rows:
            row["error"] = error_line(row["stack_trace"])
    emit(output, rows, ("filename", "error"))


def _set_paused(dag_id: str, paused: bool) -> None:
    from ketch import operations

    with db_session() as session:
        operations.set_paused(session, dag_id, paused)
    click.echo(f"DAG {dag_id} {'paused' if paused else 'unpaused'}")


@dags.command("pause")
@click.argument("dag_id")
def dags_pause(dag_id: str) -> None:
    """Pause a DAG: no new scheduled runs; running tries finish."""
    _set_paused(dag_id, True)


@dags.command("unpause")
@click.argument("dag_id")
def dags_unpause(dag_id: str) -> None:
    """Unpause a DAG."""
    _set_paused(dag_id, False)


@dags.command("trigger")
@click.argument("dag_id")
@click.option("--conf", "-c", default=None, help="Run conf as a JSON object, e.g. '{\"n\": 3}'.")
@click.option("--logical-date", default=None, help="ISO 8601 (default: none, as in Airflow 3).")
@click.option("--run-id", default=None, help="Run id (default: manual__<time>_<random>).")
@click.option("--wait", is_flag=True, help="Follow the run; exit 0 on success, 1 on failure.")
@output_option
def dags_trigger(
    dag_id: str,
    conf: str | None,
    logical_date: str | None,
    run_id: str | None,
    wait: bool,
    output: str,
) -> None:
    """Create a manual run of a DAG."""
    from ketch import operations
    from ketch.api.schemas import DagRunResponse

    conf_dict = parse_conf(conf)
    when = parse_datetime("--logical-date", logical_date)
    with db_session() as session:
        run = operations.trigger_dag(
            session, dag_id, conf=conf_dict, logical_date=when, run_id=run_id
        )
        paused = operations.get_dag(session, dag_id).is_paused
        row = DagRunResponse.from_model(run).model_dump(mode="json")
    if output == "json":
        click.echo(json.dumps(row, indent=2))
    else:
        click.echo(f"triggered DAG {dag_id}: run {row['dag_run_id']} (queued)")
    if paused:
        click.echo(f"note: DAG {dag_id} is paused; the run starts once it is unpaused", err=True)
    if wait:
        sys.exit(_wait_for_run(dag_id, row["dag_run_id"]))


def _wait_for_run(dag_id: str, run_id: str) -> int:
    """Print progress and each failure as it happens until the run ends; its exit code."""
    from ketch import operations
    from ketch.states import DagRunState

    reported: set[str] = set()
    last_line = ""
    while True:
        with db_session() as session:
            progress = operations.run_progress(session, dag_id, run_id)
        for task_id, error in sorted(progress.errors.items()):
            if task_id not in reported:
                reported.add(task_id)
                state = progress.states[task_id]
                click.echo(f"  {state}: {task_id}" + (f": {error_line(error)}" if error else ""))
        line = f"{progress.done}/{progress.total} tasks done, {progress.failed} failed"
        if line != last_line:
            click.echo(line)
            last_line = line
        if progress.state in (DagRunState.SUCCESS, DagRunState.FAILED):
            click.echo(f"run {run_id} {progress.state}")
            return 0 if progress.state == DagRunState.SUCCESS else 1
        time.sleep(WAIT_POLL_SECONDS)


@dags.command("mark-run")
@click.argument("dag_id")
@click.argument("run_id")
@click.option(
    "--state",
    type=click.Choice(["success", "failed", "queued"]),
    required=True,
    help="success: every task instance becomes success; failed: running tries fail, "
    "pending ones are skipped; queued: the run is started again.",
)
def dags_mark_run(dag_id: str, run_id: str, state: str) -> None:
    """Set the state of a DAG run (as Airflow's "mark run as")."""
    from ketch import operations

    with db_session() as session:
        operations.set_dag_run_state(session, dag_id, run_id, state)
    click.echo(f"run {run_id} of DAG {dag_id} marked {state}")


@dags.command("cancel")
@click.argument("dag_id")
@click.argument("run_id")
def dags_cancel(dag_id: str, run_id: str) -> None:
    """Stop a run: it is marked failed, running tries are stopped, pending tasks skipped."""
    from ketch import operations
    from ketch.states import DagRunState, TaskInstanceState

    with db_session() as session:
        run = operations.get_dag_run(session, dag_id, run_id)
        if run.state in (DagRunState.SUCCESS, DagRunState.FAILED):
            click.echo(f"run {run_id} of DAG {dag_id} already finished ({run.state}): not changed")
            return
        states = operations.run_progress(session, dag_id, run_id).states.values()
        running = sum(1 for s in states if s == TaskInstanceState.RUNNING)
        operations.cancel_dag_run(session, dag_id, run_id)
    click.echo(f"run {run_id} of DAG {dag_id} cancelled (failed); {running} running tries stopped")
