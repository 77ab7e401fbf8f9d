"""``ketch task run``: what a task try runs (started by the executor, not by people).

It must stay light: only click and the standard library here, and the runner itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group()
def task() -> None:
    """What a task try runs (started by the executor, not by people)."""


@task.command("run")
@click.argument("dag_id")
@click.argument("task_id")
@click.argument("run_id")
@click.option("--try", "try_number", type=int, required=True, help="The try number.")
@click.option("--map-index", type=int, default=-1, show_default=True, help="The mapped instance.")
@click.option(
    "--log-file", type=click.Path(path_type=Path), default=None, help="Also tee output here."
)
def task_run(
    dag_id: str,
    task_id: str,
    run_id: str,
    try_number: int,
    map_index: int,
    log_file: Path | None,
) -> None:
    """Run one try of a task through the execution API (never the database)."""
    from ketch.worker.runner import main as runner_main

    argv = [dag_id, task_id, run_id, "--try", str(try_number)]
    if map_index >= 0:
        argv += ["--map-index", str(map_index)]
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    sys.exit(runner_main(argv))
