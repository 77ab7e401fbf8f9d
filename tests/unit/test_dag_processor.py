"""The DAG processor on SQLite and PostgreSQL: good files, broken files, changes, deletions."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.config import Settings
from ketch.dag_processing.files import BUNDLED_EXAMPLES, list_dag_files
from ketch.dag_processing.processor import DagProcessor
from ketch.db.models import DagModel, DagVersion, ImportError_

GOOD = """
from ketch import DAG, EmptyTask
with DAG("{dag_id}", is_paused_upon_creation={paused}):
    EmptyTask(task_id="{task_id}")
"""


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


def good(folder: Path, name: str, dag_id: str, task_id: str = "t", paused: Any = None) -> Path:
    return write(folder, name, GOOD.format(dag_id=dag_id, task_id=task_id, paused=paused))


def processor(engine: Engine, folder: Path, **core: Any) -> DagProcessor:
    settings = Settings(core={"dags_folder": str(folder), **core})  # type: ignore[arg-type]
    return DagProcessor(settings, engine)


def dags(engine: Engine) -> dict[str, DagModel]:
    with Session(engine) as s:
        return {d.dag_id: d for d in s.scalars(select(DagModel))}


def errors(engine: Engine) -> dict[str, str]:
    with Session(engine) as s:
        return {Path(e.filename).name: e.stacktrace for e in s.scalars(select(ImportError_))}


BROKEN = {
    "syntax.py": "from ketch import DAG\nwith DAG('s') as d\n    pass\n",
    "raises.py": "from ketch import DAG\nraise RuntimeError('boom at import')\n",
    "cycle.py": """
        from ketch import DAG, EmptyTask
        with DAG("cyc"):
            a = EmptyTask(task_id="a"); b = EmptyTask(task_id="b")
            a >> b >> a
        """,
    "dup_task.py": """
        from ketch import DAG, EmptyTask
        with DAG("dt"):
            EmptyTask(task_id="a"); EmptyTask(task_id="a")
        """,
}


def test_broken_files_are_import_errors_and_others_load(engine: Engine, tmp_path: Path) -> None:
    good(tmp_path, "ok.py", "ok")
    for name, body in BROKEN.items():
        write(tmp_path, name, body)
    summary = processor(engine, tmp_path).parse_all()
    assert summary.files == 5 and summary.dags == 1 and summary.changed
    assert set(dags(engine)) == {"ok"}
    errs = errors(engine)
    assert set(errs) == set(BROKEN)
    assert "SyntaxError" in errs["syntax.py"]
    assert "Traceback" in errs["raises.py"] and "boom at import" in errs["raises.py"]
    assert "cycle: a >> b >> a" in errs["cycle.py"]
    assert "duplicate task_id 'a'" in errs["dup_task.py"]


def test_new_dag_rows_and_pause_rules(engine: Engine, tmp_path: Path) -> None:
    good(tmp_path, "a.py", "paused_default")
    good(tmp_path, "b.py", "unpaused", paused=False)
    processor(engine, tmp_path).parse_all()
    rows = dags(engine)
    assert rows["paused_default"].is_paused is True  # dags_are_paused_at_creation
    assert rows["unpaused"].is_paused is False
    row = rows["unpaused"]
    assert row.is_active and row.needs_next_dagrun and row.relative_fileloc == "b.py"
    assert row.serialized["tasks"]["t"]["task_id"] == "t"
    with Session(engine) as s:
        assert s.get(DagVersion, row.serialized_hash) is not None


def test_unchanged_file_is_not_rewritten_and_pause_is_kept(engine: Engine, tmp_path: Path) -> None:
    good(tmp_path, "a.py", "a")
    proc = processor(engine, tmp_path)
    proc.parse_all()
    with Session(engine) as s:
        row = s.get(DagModel, "a")
        assert row is not None
        row.needs_next_dagrun = False
        row.is_paused = False
        first_hash, first_parsed = row.serialized_hash, row.last_parsed_at
        s.commit()
    summary = proc.parse_all()
    assert not summary.changed
    row = dags(engine)["a"]
    assert row.serialized_hash == first_hash and row.needs_next_dagrun is False
    assert row.last_parsed_at is not None and first_parsed is not None
    assert row.last_parsed_at >= first_parsed
    good(tmp_path, "a.py", "a", task_id="renamed")
    assert proc.parse_all().changed
    row = dags(engine)["a"]
    assert row.serialized_hash != first_hash and row.needs_next_dagrun is True
    assert row.is_paused is False  # an existing DAG keeps its pause state
    with Session(engine) as s:
        assert len(s.scalars(select(DagVersion).where(DagVersion.dag_id == "a")).all()) == 2


def test_broken_file_keeps_last_good_dags_until_fixed(engine: Engine, tmp_path: Path) -> None:
    path = good(tmp_path, "a.py", "a")
    proc = processor(engine, tmp_path)
    proc.parse_all()
    before = dags(engine)["a"].serialized_hash
    path.write_text(path.read_text() + "\nraise ValueError('oops')\n")
    proc.parse_all()
    assert "oops" in errors(engine)["a.py"]
    row = dags(engine)["a"]
    assert row.is_active and row.serialized_hash == before
    good(tmp_path, "a.py", "a", task_id="fixed")
    proc.parse_all()
    assert errors(engine) == {}
    assert "fixed" in dags(engine)["a"].serialized["tasks"]


def test_duplicate_dag_id_across_files(engine: Engine, tmp_path: Path) -> None:
    first = good(tmp_path, "a_first.py", "same", task_id="one")
    proc = processor(engine, tmp_path)
    proc.parse_all()
    good(tmp_path, "b_second.py", "same", task_id="two")
    proc.parse_all()
    row = dags(engine)["same"]
    assert row.fileloc == str(first) and "one" in row.serialized["tasks"]
    err = errors(engine)["b_second.py"]
    assert "a_first.py" in err and "b_second.py" in err
    # Moving the DAG: the old file stops defining it, the new one takes over in one pass.
    write(tmp_path, "a_first.py", "# ketch dag moved away\n")
    proc.parse_all()
    row = dags(engine)["same"]
    assert row.fileloc.endswith("b_second.py") and row.is_active
    assert errors(engine) == {}


def test_timeout_kills_the_parse(engine: Engine, tmp_path: Path) -> None:
    write(tmp_path, "slow.py", "import time\nfrom ketch import DAG\ntime.sleep(60)\n")
    good(tmp_path, "fast.py", "fast")
    summary = processor(engine, tmp_path, dagbag_import_timeout=1).parse_all()
    assert "timed out after 1s" in errors(engine)["slow.py"]
    assert "fast" in dags(engine) and summary.dags == 1


def test_deleted_file_deactivates_its_dags(engine: Engine, tmp_path: Path) -> None:
    path = good(tmp_path, "gone.py", "gone")
    broken = write(tmp_path, "broken.py", "import ketch  # dag\nraise RuntimeError('x')\n")
    proc = processor(engine, tmp_path)
    proc.parse_all()
    path.unlink()
    broken.unlink()
    assert proc.parse_all().changed
    assert dags(engine)["gone"].is_active is False
    assert errors(engine) == {}
    good(tmp_path, "gone.py", "gone")
    proc.parse_all()
    assert dags(engine)["gone"].is_active is True


def test_parse_paths_handles_one_changed_or_deleted_file(engine: Engine, tmp_path: Path) -> None:
    a = good(tmp_path, "a.py", "a")
    good(tmp_path, "b.py", "b")
    proc = processor(engine, tmp_path)
    summary = proc.parse_paths([a])
    assert summary.files == 1 and set(dags(engine)) == {"a"}
    a.unlink()
    assert proc.parse_paths([a]).changed
    assert dags(engine)["a"].is_active is False


def test_safe_mode_and_ketchignore(tmp_path: Path) -> None:
    good(tmp_path, "yes.py", "yes")
    write(tmp_path, "no_keywords.py", "x = 1\n")
    good(tmp_path, "skipped/inside.py", "inside")
    good(tmp_path, "keep/inside.py", "keep")
    good(tmp_path, "keep/tmp_scratch.py", "scratch")
    write(tmp_path, ".ketchignore", "^skipped\n# comment\n")
    write(tmp_path, "keep/.ketchignore", "tmp_.*\n")
    names = [p.relative_to(tmp_path).as_posix() for p in list_dag_files(tmp_path)]
    assert names == ["yes.py", "keep/inside.py"]


def test_examples_are_used_without_a_dags_folder(sqlite_engine: Engine) -> None:
    summary = DagProcessor(Settings(), sqlite_engine).parse_all()
    assert summary.errors == {}
    rows = dags(sqlite_engine)
    assert {
        "example_etl",
        "example_branching",
        "example_fan_out_fan_in",
        "example_scheduled_catchup",
    } <= set(rows)
    assert all(r.is_paused is False for r in rows.values())
    assert all(Path(r.fileloc).parent == BUNDLED_EXAMPLES for r in rows.values())
    fan = rows["example_fan_out_fan_in"].serialized["tasks"]
    assert fan["total"]["upstream_task_ids"] == sorted(
        ["square"] + [f"square__{i}" for i in range(1, 10)]
    )


def wait_for(condition: Any, what: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"gave up waiting for {what}")


def test_background_thread_watches_changes(sqlite_engine: Engine, tmp_path: Path) -> None:
    good(tmp_path, "a.py", "a")
    woken = threading.Event()
    settings = Settings(core={"dags_folder": str(tmp_path)})  # type: ignore[arg-type]
    proc = DagProcessor(settings, sqlite_engine, on_change=woken.set)
    proc.start()
    try:
        wait_for(lambda: "a" in dags(sqlite_engine), "the first pass")
        wait_for(woken.is_set, "the change callback")  # it runs just after the commit
        good(tmp_path, "b.py", "b")
        wait_for(lambda: "b" in dags(sqlite_engine), "the new file to be parsed")
        (tmp_path / "a.py").unlink()
        wait_for(lambda: dags(sqlite_engine)["a"].is_active is False, "the deletion")
    finally:
        proc.stop()
    assert proc._thread is None


BAD_EXECUTOR_CONFIG = """
from datetime import datetime, timezone
from ketch import DAG, EmptyTask
with DAG("k8s_bad", start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), schedule=None):
    EmptyTask(task_id="t", executor_config={"kubernetes": {"imagee": "python:3.12"}})
"""


def test_invalid_executor_config_is_an_import_error_with_the_kubernetes_executor(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    write(tmp_path, "k8s_bad_ketch_dag.py", BAD_EXECUTOR_CONFIG)
    processor(sqlite_engine, tmp_path, executor="kubernetes").parse_all()
    error = errors(sqlite_engine)["k8s_bad_ketch_dag.py"]
    assert "task 't'" in error and "executor_config.imagee" in error
    assert "k8s_bad" not in dags(sqlite_engine)


def test_executor_config_is_not_checked_for_the_local_executor(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    write(tmp_path, "k8s_bad_ketch_dag.py", BAD_EXECUTOR_CONFIG)
    processor(sqlite_engine, tmp_path, executor="local").parse_all()
    assert "k8s_bad" in dags(sqlite_engine)


HINT = "(ketch dags errors shows the traceback)"


def import_error_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(level, message) of the processor's lines about import errors, then clears them."""
    lines = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "ketch.dag_processing.processor" and r.getMessage().startswith("DAG file ")
    ]
    caplog.clear()
    return lines


def test_import_errors_are_logged_once_with_file_and_line(
    sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="ketch.dag_processing")
    path = write(
        tmp_path, "team/raises.py", "from ketch import DAG\n\nraise RuntimeError('boom')\n"
    )
    write(tmp_path, "syntax.py", "from ketch import DAG\nwith DAG('s') as d\n    pass\n")
    write(tmp_path, "helper_mod.py", "def make():\n    raise KeyError('no such table')\n")
    write(
        tmp_path,
        "uses_helper.py",
        "from ketch import DAG\nimport helper_mod\n\n\nhelper_mod.make()\n",
    )
    write(tmp_path, "slow.py", "import time\nfrom ketch import DAG\ntime.sleep(60)\n")
    good(tmp_path, "fine.py", "fine")
    proc = processor(sqlite_engine, tmp_path, dagbag_import_timeout=2)
    proc.parse_all()
    assert sorted(import_error_logs(caplog)) == [
        (
            "WARNING",
            f"DAG file slow.py: import timed out after 2s ([core] dagbag_import_timeout) {HINT}",
        ),
        ("WARNING", f"DAG file syntax.py line 2: SyntaxError: expected ':' {HINT}"),
        ("WARNING", f"DAG file team/raises.py line 3: RuntimeError: boom {HINT}"),
        # the last frame in the DAG file, not the helper module's line
        ("WARNING", f"DAG file uses_helper.py line 5: KeyError: 'no such table' {HINT}"),
    ]
    (tmp_path / "slow.py").unlink()
    proc.parse_all()  # a rescan logs nothing new
    proc.parse_paths([path])
    assert import_error_logs(caplog) == []
    path.write_text("from ketch import DAG\nraise ValueError('other\\nlines')\n")
    proc.parse_paths([path])  # a changed error is logged again
    assert import_error_logs(caplog) == [
        ("WARNING", f"DAG file team/raises.py line 2: ValueError: other ... {HINT}")
    ]
    good(tmp_path, "team/raises.py", "raises")
    proc.parse_paths([path])
    assert import_error_logs(caplog) == [
        ("INFO", "DAG file team/raises.py imports again: its import error is cleared")
    ]
    proc.parse_all()
    assert import_error_logs(caplog) == []


def test_a_restarted_processor_logs_standing_errors_and_fixes(
    sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="ketch.dag_processing")
    broken = write(tmp_path, "a.py", "import ketch  # dag\nraise RuntimeError('x')\n")
    processor(sqlite_engine, tmp_path).parse_all()
    assert [level for level, _ in import_error_logs(caplog)] == ["WARNING"]
    # A new scheduler says once what is still broken ...
    processor(sqlite_engine, tmp_path).parse_all()
    assert [level for level, _ in import_error_logs(caplog)] == ["WARNING"]
    # ... and that a file fixed while it was down imports again.
    good(tmp_path, broken.name, "a")
    processor(sqlite_engine, tmp_path).parse_all()
    assert import_error_logs(caplog) == [
        ("INFO", "DAG file a.py imports again: its import error is cleared")
    ]


def test_a_dag_defined_twice_is_logged_without_a_line(
    sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="ketch.dag_processing")
    good(tmp_path, "a_first.py", "same")
    proc = processor(sqlite_engine, tmp_path)
    proc.parse_all()
    good(tmp_path, "b_second.py", "same")
    proc.parse_all()
    [(level, line)] = import_error_logs(caplog)
    assert level == "WARNING"
    assert line.startswith("DAG file b_second.py: DAG 'same' is defined in both ")
    assert line.endswith(HINT)


def test_dag_file_top_level_code_gets_no_scheduler_secret(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DAG file is imported in a child that gets what a try gets, not the scheduler's env."""
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE=")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-of-the-scheduler")
    write(
        tmp_path,
        "spy.py",
        """
        import os
        from ketch import dag  # (safe mode parses only files that mention ketch and dag)
        seen = sorted(k for k in os.environ if k.startswith(("KETCH__", "AWS_SECRET")))
        raise RuntimeError(f"environment: {seen} PATH={'PATH' in os.environ}")
        """,
    )
    processor(sqlite_engine, tmp_path).parse_all()
    message = errors(sqlite_engine)["spy.py"]
    assert "environment: [] PATH=True" in message, message
