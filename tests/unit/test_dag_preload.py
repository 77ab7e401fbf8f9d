"""The fork server imports a try's DAG file once per file version; tries never see a stale one."""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path

from ketch.authoring import loader
from ketch.executors.forkserver.client import ChildExit, ForkServer

TARGETS = "tests.unit._forkserver_targets"

DAG_V1 = """
from datetime import datetime, timezone
from ketch import DAG, EmptyTask
with DAG("preloaded", start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), schedule=None):
    EmptyTask(task_id="first")
"""
DAG_V2 = DAG_V1 + '    EmptyTask(task_id="second")\n'


def test_load_dag_uses_a_preloaded_file_only_while_it_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "preloaded_dag.py"
    path.write_text(DAG_V1)
    loader.preload(str(path))
    try:
        first = loader.load_dag(str(path), "preloaded")
        assert loader.load_dag(str(path), "preloaded") is first  # no re-import
        path.write_text(DAG_V2)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        again = loader.load_dag(str(path), "preloaded")
        assert sorted(again.tasks) == ["first", "second"]
    finally:
        loader._preloaded.pop(str(path), None)


def _run(fs: ForkServer, exits: queue.Queue[ChildExit], path: Path, log: Path) -> str:
    fs.spawn(
        [str(path), "preloaded"],
        env=dict(os.environ),
        log_file=str(log),
        target=f"{TARGETS}:describe_dag",
        dag_file=str(path),
    )
    exit_ = exits.get(timeout=20)
    assert exit_.exit_code == 0, log.read_text()
    return log.read_text()


def test_forked_tries_inherit_the_import_and_see_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "preloaded_dag.py"
    path.write_text(DAG_V1)
    exits: queue.Queue[ChildExit] = queue.Queue()
    fs = ForkServer(exits.put)
    fs.start([TARGETS, "ketch.authoring.loader"])
    try:
        assert "inherited=True tasks=['first']" in _run(fs, exits, path, tmp_path / "1.log")
        path.write_text(DAG_V2)
        assert "tasks=['first', 'second']" in _run(fs, exits, path, tmp_path / "2.log")
    finally:
        fs.stop()


def test_a_dag_file_that_fails_to_import_still_forks_the_try(tmp_path: Path) -> None:
    path = tmp_path / "broken_dag.py"
    path.write_text("raise SystemExit('top-level code exits')\n")
    exits: queue.Queue[ChildExit] = queue.Queue()
    fs = ForkServer(exits.put)
    fs.start([TARGETS])
    try:
        spawned = fs.spawn(
            ["0"], env={}, log_file=None, target=f"{TARGETS}:exit_with", dag_file=str(path)
        )
        exit_ = exits.get(timeout=20)
        assert exit_.pid == spawned.pid and exit_.exit_code == 0  # the server survived
        assert fs.pid is not None
    finally:
        fs.stop()
