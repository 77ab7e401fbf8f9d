"""The ``ketch`` command.

Every import beyond click and the standard library happens inside the command
that needs it: ``ketch task run`` starts for every task try and must not pay for
(or depend on) the web and database stack; a test checks ``sys.modules``.

Commands that read or change state go through :mod:`ketch.operations` directly
on the database (the same functions the REST API calls). Only the commands that
start servers, and ``ketch db migrate``, migrate the schema; the others say to
run ``ketch db migrate`` when the schema is missing or old. A database that
cannot be reached is one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from ketch.config import Settings

WAIT_POLL_SECONDS = 0.5
LOG_POLL_SECONDS = 0.25


class CliError(click.ClickException):
    """An error the user can act on: printed as one line on stderr, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"ketch: {self.format_message()}", err=True)


# --- shared plumbing -------------------------------------------------------------------------


def _settings() -> Settings:
    from pydantic import ValidationError

    from ketch.config import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        raise CliError(f"invalid configuration: {exc}") from exc


def _engine(settings: Settings) -> Engine:
    from ketch.db.engine import DatabaseUnavailable, check_connection, get_engine

    engine = get_engine(settings.database_url)
    try:
        check_connection(engine)
    except DatabaseUnavailable as exc:
        raise CliError(str(exc)) from exc
    return engine


def _require_current_schema(engine: Engine) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from ketch.db.migrate import alembic_config

    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    heads = set(ScriptDirectory.from_config(alembic_config(engine)).get_heads())
    if not current:
        raise CliError("the metadata database has no ketch schema yet: run `ketch db migrate`")
    if current != heads:
        raise CliError("the metadata database schema is out of date: run `ketch db migrate`")


def _migrated_engine(settings: Settings) -> Engine:
    """For commands that start servers: reach the database and bring its schema up to date."""
    from ketch.db.engine import DatabaseUnavailable
    from ketch.db.migrate import migrate

    engine = _engine(settings)
    try:
        migrate(engine)
    except DatabaseUnavailable as exc:
        raise CliError(str(exc)) from exc
    return engine


@contextmanager
def _db_session() -> Iterator[Session]:
    """A session on a reachable, migrated database; commits on success. Errors of user
    actions (unknown DAG, invalid conf...) become one-line CLI errors."""
    from ketch import operations
    from ketch.db.engine import session_scope
    from ketch.exceptions import ParamValidationError

    engine = _engine(_settings())
    _require_current_schema(engine)
    try:
        with session_scope(engine) as session:
            yield session
    except (operations.OperationError, ParamValidationError) as exc:
        raise CliError(str(exc)) from exc


def _parse_datetime(field: str, value: str | None) -> datetime | None:
    """ISO 8601; a value without a timezone is taken as UTC (as Airflow's CLI does)."""
    if value is None:
        return None
    from datetime import UTC

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CliError(f"{field}: not an ISO 8601 date/time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _output_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--output",
        "-o",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Aligned columns for people, or JSON for scripts.",
    )(func)


def _emit(output: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print ``rows`` as JSON (every field) or as a table of ``columns``."""
    if output == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    from tabulate import tabulate

    table = [[_cell(row.get(c)) for c in columns] for row in rows]
    click.echo(tabulate(table, headers=list(columns), tablefmt="simple"))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _short_time(value: Any) -> str | None:
    """A stored ISO datetime shortened for a table cell (seconds, no offset when UTC)."""
    if not value:
        return None
    text = str(value)
    return text[:19].replace("T", " ") + ("" if text.endswith(("+00:00", "Z")) else text[19:])


# --- the command tree ------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ketch", prog_name="ketch")
def cli() -> None:
    """ketch: Airflow-style DAGs, one process or pod per task try."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``ketch``, ``python -m ketch``)."""
    cli.main(args=argv, prog_name="ketch")


# --- servers ---------------------------------------------------------------------------------


@cli.command()
def standalone() -> None:
    """Scheduler, DAG processor and web server in one process (the embedded default)."""
    from ketch.standalone import run_standalone

    settings = _settings()
    run_standalone(settings, _migrated_engine(settings))


@cli.command()
def scheduler() -> None:
    """The scheduler with its DAG processor and executor (no web server)."""
    from ketch.standalone import run_scheduler

    settings = _settings()
    run_scheduler(settings, _migrated_engine(settings))


@cli.command()
@click.option("--host", default=None, help="Address to bind (default: [api] host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (default: [api] port, 8080).")
def web(host: str | None, port: int | None) -> None:
    """The web server: REST API and the execution API task tries talk to."""
    from ketch.standalone import run_web

    settings = _settings()
    _migrated_engine(settings)
    run_web(settings, host=host, port=port)


# --- db ----------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """The metadata database."""


@db.command("migrate")
def db_migrate() -> None:
    """Create or upgrade the schema (idempotent)."""
    settings = _settings()
    engine = _migrated_engine(settings)
    click.echo(f"database {engine.url.render_as_string(hide_password=True)} is up to date")


# --- dags --------------------------------------------------------------------------------------


@cli.group()
def dags() -> None:
    """List, trigger, pause DAGs; their runs (mark, cancel) and import errors."""


@dags.command("list")
@_output_option
@click.option("--paused/--unpaused", default=None, help="Only paused (or unpaused) DAGs.")
@click.option("--tag", "tags", multiple=True, help="Only DAGs with any of these tags.")
def dags_list(output: str, paused: bool | None, tags: tuple[str, ...]) -> None:
    """The DAGs, with their schedule, last run and next run."""
    from ketch import operations
    from ketch.api.schemas import DagResponse

    with _db_session() as session:
        page = operations.list_dags(session, paused=paused, tags=list(tags) or None)
        rows = [
            DagResponse.from_model(s.dag, s.last_run).model_dump(mode="json") for s in page.items
        ]
    for row in rows:
        row["paused"] = "yes" if row["is_paused"] else "no"
        row["next_run"] = _short_time(row["next_dagrun_run_after"])
        row["last_run"] = row["last_run_state"]
    _emit(output, rows, ("dag_id", "paused", "timetable_summary", "tags", "last_run", "next_run"))


@dags.command("runs")
@click.argument("dag_id")
@_output_option
@click.option("--state", default=None, help="Only runs in this state.")
@click.option("--limit", type=int, default=25, show_default=True)
def dags_runs(dag_id: str, output: str, state: str | None, limit: int) -> None:
    """The runs of a DAG, newest first."""
    from ketch import operations
    from ketch.api.schemas import DagRunResponse

    with _db_session() as session:
        page = operations.list_dag_runs(session, dag_id, state=state, limit=limit)
        rows = [DagRunResponse.from_model(r).model_dump(mode="json") for r in page.items]
    for row in rows:
        row["run_after"] = _short_time(row["run_after"]) if output == "table" else row["run_after"]
        row["logical_date"] = (
            _short_time(row["logical_date"]) if output == "table" else row["logical_date"]
        )
    _emit(output, rows, ("dag_run_id", "run_type", "state", "logical_date", "run_after"))


@dags.command("errors")
@_output_option
def dags_errors(output: str) -> None:
    """DAG files that failed to import, with the error."""
    from ketch import operations
    from ketch.api.schemas import ImportErrorResponse

    with _db_session() as session:
        page = operations.list_import_errors(session)
        rows = [ImportErrorResponse.from_model(e).model_dump(mode="json") for e in page.items]
    if output == "table":
        for row in rows:
            lines = [ln for ln in row["stack_trace"].strip().splitlines() if ln.strip()]
            row["error"] = lines[-1] if lines else ""
    _emit(output, rows, ("filename", "error"))


def _set_paused(dag_id: str, paused: bool) -> None:
    from ketch import operations

    with _db_session() as session:
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
@_output_option
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

    conf_dict = _parse_conf(conf)
    when = _parse_datetime("--logical-date", logical_date)
    with _db_session() as session:
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

    with _db_session() as session:
        operations.set_dag_run_state(session, dag_id, run_id, state)
    click.echo(f"run {run_id} of DAG {dag_id} marked {state}")


@dags.command("cancel")
@click.argument("dag_id")
@click.argument("run_id")
def dags_cancel(dag_id: str, run_id: str) -> None:
    """Stop a run: it is marked failed, running tries are stopped, pending tasks skipped."""
    from ketch import operations
    from ketch.states import DagRunState, TaskInstanceState

    with _db_session() as session:
        run = operations.get_dag_run(session, dag_id, run_id)
        if run.state in (DagRunState.SUCCESS, DagRunState.FAILED):
            click.echo(f"run {run_id} of DAG {dag_id} already finished ({run.state}): not changed")
            return
        states = operations.run_progress(session, dag_id, run_id).states.values()
        running = sum(1 for s in states if s == TaskInstanceState.RUNNING)
        operations.cancel_dag_run(session, dag_id, run_id)
    click.echo(f"run {run_id} of DAG {dag_id} cancelled (failed); {running} running tries stopped")


def _parse_conf(conf: str | None) -> dict[str, Any]:
    if conf is None:
        return {}
    try:
        parsed = json.loads(conf)
    except json.JSONDecodeError as exc:
        raise CliError(f"--conf is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise CliError("--conf must be a JSON object")
    return parsed


def _wait_for_run(dag_id: str, run_id: str) -> int:
    """Print progress and each failure as it happens until the run ends; its exit code."""
    from ketch import operations
    from ketch.states import DagRunState

    reported: set[str] = set()
    last_line = ""
    while True:
        with _db_session() as session:
            progress = operations.run_progress(session, dag_id, run_id)
        for task_id, error in sorted(progress.errors.items()):
            if task_id not in reported:
                reported.add(task_id)
                state = progress.states[task_id]
                click.echo(f"  {state}: {task_id}" + (f": {_first_line(error)}" if error else ""))
        line = f"{progress.done}/{progress.total} tasks done, {progress.failed} failed"
        if line != last_line:
            click.echo(line)
            last_line = line
        if progress.state in (DagRunState.SUCCESS, DagRunState.FAILED):
            click.echo(f"run {run_id} {progress.state}")
            return 0 if progress.state == DagRunState.SUCCESS else 1
        time.sleep(WAIT_POLL_SECONDS)


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --- tasks -------------------------------------------------------------------------------------


@cli.group()
def tasks() -> None:
    """A DAG's tasks and task instances: list, test, logs, clear, mark."""


@tasks.command("list")
@click.argument("dag_id")
@_output_option
def tasks_list(dag_id: str, output: str) -> None:
    """The tasks of a DAG in definition order."""
    from ketch import operations
    from ketch.api.schemas import TaskResponse

    with _db_session() as session:
        serialized = operations.serialized_dag(operations.get_dag(session, dag_id))
    rows = [
        TaskResponse.from_serialized(t).model_dump(mode="json") for t in serialized.tasks.values()
    ]
    _emit(output, rows, ("task_id", "kind", "upstream_task_ids", "trigger_rule", "retries"))


@tasks.command("states")
@click.argument("dag_id")
@click.argument("run_id")
@_output_option
def tasks_states(dag_id: str, run_id: str, output: str) -> None:
    """The task instances of one run with their state and tries."""
    from ketch import operations
    from ketch.api.schemas import TaskInstanceResponse

    with _db_session() as session:
        tis = operations.list_task_instances(session, dag_id, run_id)
        rows = [TaskInstanceResponse.from_model(ti).model_dump(mode="json") for ti in tis]
    for row in rows:
        row["tries"] = row["try_number"]
        row["error"] = _first_line(row["error"] or "")
    _emit(output, rows, ("task_id", "state", "tries", "max_tries", "error"))


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
    with _db_session() as session:
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
    with _db_session() as session:
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

    with _db_session() as session:
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

    with _db_session() as session:
        ti = operations.get_task_instance(session, dag_id, run_id, task_id)
        ti_id, latest = ti.id, ti.try_number
    number = try_number or latest
    if number < 1 or number > latest:
        raise CliError(f"task {task_id!r} of run {run_id!r} has no try {number} (tries: {latest})")
    path = log_path(_settings().log_folder, TryKey(dag_id, run_id, task_id, number))
    if not follow:
        if not path.is_file():
            raise CliError(f"no log for try {number} of task {task_id!r} (looked in {path})")
        sys.stdout.buffer.write(path.read_bytes())
        return
    _follow_file(path, lambda: _try_is_live(ti_id, number))


def _try_is_live(ti_id: int, try_number: int) -> bool:
    from ketch.db.models import TaskInstance
    from ketch.states import TaskInstanceState

    with _db_session() as session:
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


@tasks.command("test")
@click.argument("dag_id")
@click.argument("task_id")
@click.option("--logical-date", default=None, help="ISO 8601 (default: now).")
@click.option("--conf", "-c", default=None, help="Run conf as a JSON object.")
def tasks_test(dag_id: str, task_id: str, logical_date: str | None, conf: str | None) -> None:
    """Run one task here, without the scheduler or any database state (like `airflow tasks test`).

    Upstream return values are not available (they read as None).
    """
    settings = _settings()
    when = _parse_datetime("--logical-date", logical_date)
    sys.exit(_run_task_test(settings, dag_id, task_id, when, _parse_conf(conf)))


def _find_dag_file(folder: Path, dag_id: str) -> Any:
    """Load ``dag_id`` from the first file in ``folder`` that defines it (no database needed).

    Files that do not even mention the id are skipped unread, as Airflow's safe mode
    skips files that do not mention "dag"."""
    from ketch.authoring.loader import DagNotFound, load_dag

    for path in sorted(folder.rglob("*.py")):
        try:
            if dag_id not in path.read_text(errors="replace"):
                continue
            return load_dag(str(path), dag_id)
        except DagNotFound:
            continue
    raise CliError(f"DAG {dag_id!r} not found in {folder}")


def _run_task_test(
    settings: Settings,
    dag_id: str,
    task_id: str,
    logical_date: datetime | None,
    conf: dict[str, Any],
) -> int:
    """Run the task with a synthetic context (try 1, a temporary run id); 0 unless it failed."""
    import traceback
    from datetime import UTC

    from ketch.authoring.context import build_context
    from ketch.authoring.params import resolve_params
    from ketch.authoring.serialize import serialize_dag
    from ketch.authoring.timetables import timetable_for
    from ketch.exceptions import ParamValidationError, SkipTask
    from ketch.standalone import effective_dags_folder

    folder = effective_dags_folder(settings)
    dag = _find_dag_file(folder, dag_id)
    try:
        task_obj = dag.get_task(task_id)
    except KeyError as exc:
        raise CliError(str(exc.args[0]) if exc.args else str(exc)) from exc
    serialized = serialize_dag(dag, folder)
    try:
        params = resolve_params(serialized.params, conf)
    except ParamValidationError as exc:
        raise CliError(str(exc)) from exc
    now = datetime.now(UTC)
    when = logical_date or now
    interval = timetable_for(serialized.schedule).infer_manual_data_interval(run_after=when)
    payload = {
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": f"__ketch_temporary_run_{now.isoformat()}__",
        "try_number": 1,
        "max_tries": 0,
        "logical_date": when.isoformat(),
        "data_interval_start": interval.start.isoformat() if interval else None,
        "data_interval_end": interval.end.isoformat() if interval else None,
        "params": params,
        "conf": conf,
        "fileloc": serialized.fileloc,
        "relative_fileloc": serialized.relative_fileloc,
    }
    try:
        result = task_obj.execute(build_context(payload), lambda _task_id, _key="": None)
    except SkipTask as exc:
        click.echo(f"task {task_id} skipped" + (f": {exc}" if str(exc) else ""))
        return 0
    except Exception:
        traceback.print_exc()
        click.echo(f"task {task_id} failed", err=True)
        return 1
    if result.return_value is not None:
        click.echo(f"return value: {json.dumps(result.return_value, default=repr)}")
    if result.follow_task_ids is not None:
        click.echo(f"follow task ids: {', '.join(result.follow_task_ids)}")
    click.echo(f"task {task_id} succeeded")
    return 0


# --- pools ---------------------------------------------------------------------------------------


@cli.group()
def pools() -> None:
    """Pools: how many slots their task instances may take at once."""


@pools.command("list")
@_output_option
def pools_list(output: str) -> None:
    """Every pool with its slots, occupied (queued + running) and open slots."""
    from ketch import operations
    from ketch.api.schemas import PoolResponse

    with _db_session() as session:
        rows = [
            PoolResponse.from_stats(p).model_dump(mode="json")
            for p in operations.list_pools(session)
        ]
    _emit(output, rows, ("name", "slots", "occupied_slots", "open_slots", "description"))


@pools.command("set")
@click.argument("name")
@click.argument("slots", type=int)
@click.option("--description", default=None, help="What the pool is for (default: unchanged).")
def pools_set(name: str, slots: int, description: str | None) -> None:
    """Create a pool or change its slots."""
    from ketch import operations
    from ketch.db.models import Pool

    with _db_session() as session:
        existed = session.get(Pool, name) is not None
        operations.set_pool(session, name, slots, description)
    click.echo(f"pool {name} {'updated' if existed else 'created'}: {slots} slots")


@pools.command("delete")
@click.argument("name")
def pools_delete(name: str) -> None:
    """Delete a pool (not the default pool)."""
    from ketch import operations

    with _db_session() as session:
        operations.delete_pool(session, name)
    click.echo(f"pool {name} deleted")


# --- task (what a try runs) ----------------------------------------------------------------------


@cli.group()
def task() -> None:
    """What a task try runs (started by the executor, not by people)."""


@task.command("run")
@click.argument("dag_id")
@click.argument("task_id")
@click.argument("run_id")
@click.option("--try", "try_number", type=int, required=True, help="The try number.")
@click.option(
    "--log-file", type=click.Path(path_type=Path), default=None, help="Also tee output here."
)
def task_run(
    dag_id: str, task_id: str, run_id: str, try_number: int, log_file: Path | None
) -> None:
    """Run one try of a task through the execution API (never the database)."""
    from ketch.worker.runner import main as runner_main

    argv = [dag_id, task_id, run_id, "--try", str(try_number)]
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    sys.exit(runner_main(argv))


# --- config --------------------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """The effective configuration."""


@config.command("show")
@click.option(
    "--output", "-o", type=click.Choice(["toml", "json"]), default="toml", show_default=True
)
def config_show(output: str) -> None:
    """Print the effective settings (file + KETCH__* environment), secrets masked."""
    data = _settings().masked()
    if output == "json":
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(_as_toml(data), nl=False)


def _as_toml(data: dict[str, dict[str, Any]]) -> str:
    """TOML has no null: unset settings are listed as comments so every key shows."""
    import tomli_w

    parts = []
    for section, values in data.items():
        present = {k: v for k, v in values.items() if v is not None}
        body = tomli_w.dumps(present)
        unset = "".join(f"# {k} = (unset)\n" for k, v in values.items() if v is None)
        parts.append(f"[{section}]\n{body}{unset}")
    return "\n".join(parts)


from ketch.cli_variables import connections, rotate_fernet_key, variables  # noqa: E402

cli.add_command(variables)
cli.add_command(connections)
cli.add_command(rotate_fernet_key)
