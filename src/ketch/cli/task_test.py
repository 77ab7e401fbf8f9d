"""``ketch tasks test``: run one task here, without the scheduler or any database state."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ketch.cli._common import CliError, load_settings, parse_conf, parse_datetime

if TYPE_CHECKING:
    from ketch.config import Settings


@click.command("test")
@click.argument("dag_id")
@click.argument("task_id")
@click.argument("date", required=False, default=None)
@click.option("--logical-date", default=None, help="ISO 8601 (default: now).")
@click.option("--conf", "-c", default=None, help="Run conf as a JSON object.")
@click.option(
    "--map-index",
    type=int,
    default=-1,
    help="The instance of a mapped task to run (-1: not mapped).",
)
def tasks_test(
    dag_id: str,
    task_id: str,
    date: str | None,
    logical_date: str | None,
    conf: str | None,
    map_index: int,
) -> None:
    """Run one task here, without the scheduler or any database state (like `airflow tasks test`).

    DATE is the logical date (ISO 8601; or --logical-date). A mapped task runs the
    instance --map-index names. Upstream return values are not available (they read as None).
    """
    if date is not None and logical_date is not None:
        raise CliError("give the logical date once: DATE or --logical-date")
    settings = load_settings()
    when = parse_datetime("--logical-date", logical_date or date)
    sys.exit(_run_task_test(settings, dag_id, task_id, when, parse_conf(conf), map_index))


def _check_map_index(task: Any, map_index: int) -> None:
    """Airflow's checks of ``tasks test --map-index`` (its messages), plus the range when
    the task maps over literals only (over an upstream value it cannot be known here)."""
    from ketch.cli.task_test_mapped import check_instance

    if task.is_mapped and map_index < 0:
        raise CliError("No map_index passed to mapped task")
    if not task.is_mapped and map_index >= 0:
        raise CliError("map_index passed to non-mapped task")
    if task.is_mapped:
        check_instance(task, map_index)


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
    map_index: int = -1,
) -> int:
    """Run the task with a synthetic context (try 1, a temporary run id); 0 unless it failed."""
    import traceback
    from datetime import UTC

    from ketch.authoring.context import build_context
    from ketch.authoring.map_index_template import render_map_index
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
    _check_map_index(task_obj, map_index)
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
        **({"map_index": map_index} if map_index >= 0 else {}),
    }
    try:
        result = task_obj.execute(build_context(payload), lambda _task_id, _key="": None)
        name = render_map_index(strict=True)
    except SkipTask as exc:
        click.echo(f"task {task_id} skipped" + (f": {exc}" if str(exc) else ""))
        return 0
    except Exception:
        traceback.print_exc()
        click.echo(f"task {task_id} failed", err=True)
        return 1
    if result.return_value is not None:
        click.echo(f"return value: {json.dumps(result.return_value, default=repr)}")
    if name is not None:
        click.echo(f"rendered map index: {name}")
    if result.follow_task_ids is not None:
        click.echo(f"follow task ids: {', '.join(result.follow_task_ids)}")
    click.echo(f"task {task_id} succeeded")
    return 0
