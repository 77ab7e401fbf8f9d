"""``ketch dags``: list, trigger (and follow), pause DAGs; their runs and import errors;
``check-airflow``: whether Airflow DAG files will run on ketch."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ketch.cli._common import (
    CliError,
    emit,
    error_line,
    output_option,
    parse_conf,
    parse_datetime,
    short_time,
)
from ketch.cli.backends import Backend, Row, get_backend
from ketch.cli.dags_test import dags_test

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
    rows = get_backend().list_dags(paused=paused, tags=tags)
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
    rows = get_backend().list_runs(dag_id, state=state, limit=limit)
    if output == "table":
        for row in rows:
            row["run_after"] = short_time(row["run_after"])
            row["logical_date"] = short_time(row["logical_date"])
    emit(output, rows, ("dag_run_id", "run_type", "state", "logical_date", "run_after"))


@dags.command("errors")
@output_option
def dags_errors(output: str) -> None:
    """DAG files that failed to import, with the error."""
    rows = get_backend().list_import_errors()
    if output == "table":
        for row in rows:
            row["error"] = error_line(row["stack_trace"])
    emit(output, rows, ("filename", "error"))


def _set_paused(dag_id: str, paused: bool) -> None:
    get_backend().set_paused(dag_id, paused)
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
@click.option("--unpause", is_flag=True, help="Unpause the DAG first if it is paused.")
@output_option
def dags_trigger(
    dag_id: str,
    conf: str | None,
    logical_date: str | None,
    run_id: str | None,
    wait: bool,
    unpause: bool,
    output: str,
) -> None:
    """Create a manual run of a DAG.

    A run of a paused DAG stays queued until the DAG is unpaused: with --wait that is an
    error (the run is created, the command exits 1 at once) unless --unpause is given.
    """
    conf_dict = parse_conf(conf)
    when = parse_datetime("--logical-date", logical_date)
    backend = get_backend()
    paused = bool(backend.get_dag(dag_id)["is_paused"])
    if paused and unpause:
        backend.set_paused(dag_id, False)
        click.echo(f"DAG {dag_id} unpaused", err=output == "json")
        paused = False
    row = backend.trigger(dag_id, conf=conf_dict, logical_date=when, run_id=run_id)
    if output == "json":
        click.echo(json.dumps(row, indent=2))
    else:
        click.echo(f"triggered DAG {dag_id}: run {row['dag_run_id']} (queued)")
    if paused and wait:
        raise CliError(
            f"DAG {dag_id} is paused: the run was created but will not start; "
            f"unpause it (ketch dags unpause {dag_id}) or pass --unpause"
        )
    if paused:
        click.echo(
            f"warning: DAG {dag_id} is paused: run {row['dag_run_id']} stays queued until it "
            f"is unpaused (ketch dags unpause {dag_id}, or trigger with --unpause)",
            err=True,
        )
    if wait:
        sys.exit(_wait_for_run(backend, dag_id, row["dag_run_id"]))


def _progress(backend: Backend, dag_id: str, run_id: str) -> tuple[str, list[Row]]:
    """The run's state, then its task instances (read after it, so a finished run's are final)."""
    state = backend.get_run(dag_id, run_id)["state"]
    return state, backend.list_task_instances(dag_id, run_id)


def _wait_for_run(backend: Backend, dag_id: str, run_id: str) -> int:
    """Print progress and each failure as it happens until the run ends; its exit code."""
    from ketch.states import FAILED_TI_STATES, FINISHED_TI_STATES, DagRunState

    failed_states = {s.value for s in FAILED_TI_STATES}
    finished_states = {s.value for s in FINISHED_TI_STATES}
    reported: set[str] = set()
    last_line = ""
    while True:
        state, tis = _progress(backend, dag_id, run_id)
        failed = sorted((ti for ti in tis if ti["state"] in failed_states), key=_task_id)
        for ti in failed:
            name = _instance_name(ti)
            if name not in reported:
                reported.add(name)
                error = ti["error"]
                click.echo(f"  {ti['state']}: {name}" + (f": {error_line(error)}" if error else ""))
        done = sum(1 for ti in tis if ti["state"] in finished_states)
        line = f"{done}/{len(tis)} tasks done, {len(failed)} failed"
        if line != last_line:
            click.echo(line)
            last_line = line
        if state in (DagRunState.SUCCESS, DagRunState.FAILED):
            click.echo(f"run {run_id} {state}")
            return 0 if state == DagRunState.SUCCESS else 1
        time.sleep(WAIT_POLL_SECONDS)


def _task_id(row: Row) -> Any:
    return row["task_id"], row.get("map_index", -1)


def _instance_name(row: Row) -> str:
    """``task`` or, for an instance of a mapped task, ``task[map_index]``."""
    index = row.get("map_index", -1)
    return f"{row['task_id']}[{index}]" if index is not None and index >= 0 else row["task_id"]


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
    get_backend().set_run_state(dag_id, run_id, state)
    click.echo(f"run {run_id} of DAG {dag_id} marked {state}")


@dags.command("cancel")
@click.argument("dag_id")
@click.argument("run_id")
def dags_cancel(dag_id: str, run_id: str) -> None:
    """Stop a run: it is marked failed, running tries are stopped, pending tasks skipped."""
    from ketch.states import DagRunState, TaskInstanceState

    backend = get_backend()
    state, tis = _progress(backend, dag_id, run_id)
    if state in (DagRunState.SUCCESS, DagRunState.FAILED):
        click.echo(f"run {run_id} of DAG {dag_id} already finished ({state}): not changed")
        return
    running = sum(1 for ti in tis if ti["state"] == TaskInstanceState.RUNNING)
    backend.set_run_state(dag_id, run_id, DagRunState.FAILED.value)
    click.echo(f"run {run_id} of DAG {dag_id} cancelled (failed); {running} running tries stopped")


@dags.command("check-airflow")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@output_option
def dags_check_airflow(path: Path, output: str) -> None:
    """Whether Airflow DAG files (a file, or a folder's DAG files) will run on ketch.

    Each file is checked for imports outside ketch's Airflow subset (with what to use
    instead), then imported with the Airflow compatibility layer as the DAG processor
    would ([core] airflow_compat = true), in its own process. Needs no scheduler and no
    database. Exit code 0 when every file will run, 1 otherwise.
    """
    from ketch.airflow_compat import real_airflow_importable
    from ketch.airflow_compat.check import check
    from ketch.authoring._defaults import defaults_from_settings
    from ketch.cli._common import load_settings

    settings = load_settings()
    if real_airflow_importable():
        click.echo(
            "ketch: a real Airflow is importable in this environment: the files are imported "
            "with it, not with ketch's Airflow layer (which never shadows it)",
            err=True,
        )
    reports = check(
        path,
        import_timeout=settings.core.dagbag_import_timeout,
        defaults=defaults_from_settings(settings),
    )
    running = sum(r.will_run for r in reports)
    if not reports:
        # A wrong path is the likely cause: nothing checked is not "everything runs".
        raise CliError(
            f"no DAG files under {path} (files mentioning 'airflow' or 'ketch', and 'dag')"
        )
    if output == "json":
        click.echo(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        base = path.resolve() if path.is_dir() else path.resolve().parent
        for report in reports:
            name = (
                report.path.relative_to(base) if report.path.is_relative_to(base) else report.path
            )
            if report.will_run:
                found = ", ".join(report.dag_ids) if report.dag_ids else "none (no DAG defined)"
                click.echo(f"{name}: will run (DAGs: {found})")
            else:
                click.echo(f"{name}: will not run")
                for problem in report.problems:
                    click.echo(f"  {problem}")
        click.echo(f"{running} of {len(reports)} files will run on ketch")
    sys.exit(0 if running == len(reports) else 1)


dags.add_command(dags_test)
