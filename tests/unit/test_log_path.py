"""The per-try log path: Airflow's layout, and never a file outside the log folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.executors.base import TryKey
from ketch.worker.task_log import UnsafeLogPath, log_path


def test_layout_is_airflows(tmp_path: Path) -> None:
    key = TryKey("etl", "manual__2026-01-01T00:00:00+00:00", "load", 2)
    assert log_path(tmp_path, key) == (
        tmp_path
        / "dag_id=etl"
        / "run_id=manual__2026-01-01T00:00:00+00:00"
        / "task_id=load"
        / "attempt=2.log"
    )


@pytest.mark.parametrize("field", ["dag_id", "run_id", "task_id"])
@pytest.mark.parametrize("value", ["../../../x", "a/b", "/etc", "..\\..\\x", "a\0b"])
def test_an_id_with_a_separator_or_nul_is_refused(tmp_path: Path, field: str, value: str) -> None:
    ids = {"dag_id": "etl", "run_id": "r1", "task_id": "load", field: value}
    with pytest.raises(UnsafeLogPath, match=field):
        log_path(tmp_path / "logs", TryKey(ids["dag_id"], ids["run_id"], ids["task_id"], 1))


def test_a_symlink_out_of_the_log_folder_is_refused(tmp_path: Path) -> None:
    logs, outside = tmp_path / "logs", tmp_path / "outside"
    outside.mkdir()
    (outside / "attempt=1.log").write_text("not a log")
    task_folder = logs / "dag_id=etl" / "run_id=r1" / "task_id=load"
    task_folder.parent.mkdir(parents=True)
    task_folder.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeLogPath, match="outside the log folder"):
        log_path(logs, TryKey("etl", "r1", "load", 1))


def test_the_file_itself_may_be_a_symlink(tmp_path: Path) -> None:
    """Writers may point a log at a device (tests use /dev/full); readers check it."""
    path = log_path(tmp_path, TryKey("etl", "r1", "load", 1))
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/null")
    assert log_path(tmp_path, TryKey("etl", "r1", "load", 1)) == path


def test_a_log_folder_reached_through_a_symlink_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real_logs"
    real.mkdir()
    (tmp_path / "logs").symlink_to(real, target_is_directory=True)
    path = log_path(tmp_path / "logs", TryKey("etl", "r1", "load", 1))
    assert path.parent.name == "task_id=load"
