"""The mounted-file source, with real files: changes, atomic replaces, half-written files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.config import get_settings
from ketch.db.models import Variable
from ketch.variables.crypto import decrypt, get_fernet
from ketch.variables.sources import Snapshot, SourceError, Unchanged
from ketch.variables.sources.file import FileVariableSource
from ketch.variables.sync import SyncService, sync_status


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_snapshot_then_unchanged_then_new_version(tmp_path: Path) -> None:
    path = tmp_path / "variables.json"
    path.write_text(json.dumps({"a": "1", "b": {"x": [1, 2]}, "n": 3, "flag": True}))
    source = FileVariableSource(path)
    first = source.fetch(None)
    assert isinstance(first, Snapshot)
    assert first.values == {"a": "1", "b": '{"x": [1, 2]}', "n": "3", "flag": "true"}
    assert source.fetch(first.version) == Unchanged(first.version)
    write_atomic(path, json.dumps({"a": "2"}))
    second = source.fetch(first.version)
    assert isinstance(second, Snapshot)
    assert second.values == {"a": "2"}
    assert second.version != first.version


def test_airflow_export_shape_with_descriptions(tmp_path: Path) -> None:
    path = tmp_path / "variables.json"
    path.write_text(
        json.dumps({"plain": "v", "described": {"value": "w", "description": "d"}, "obj": {"k": 1}})
    )
    snapshot = FileVariableSource(path).fetch(None)
    assert isinstance(snapshot, Snapshot)
    assert snapshot.values == {"plain": "v", "described": "w", "obj": '{"k": 1}'}


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        ('{"a": "1", "b": "tru', "invalid_json"),  # truncated mid-write
        ("", "empty"),
        ('["a", "b"]', "not_an_object"),
        ("null", "not_an_object"),
    ],
)
def test_bad_files_are_errors_not_empty_sets(tmp_path: Path, content: str, kind: str) -> None:
    path = tmp_path / "variables.json"
    path.write_text(content)
    with pytest.raises(SourceError) as info:
        FileVariableSource(path).fetch(None)
    assert info.value.kind == kind
    assert "tru" not in str(info.value)  # the reason names the position, never the content


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        FileVariableSource(tmp_path / "nope.json").fetch(None)


def _values(engine: Engine) -> dict[str, str]:
    fernet = get_fernet(get_settings())
    with Session(engine) as session:
        return {v.key: decrypt(fernet, v.val) for v in session.scalars(select(Variable))}


def test_sync_from_file_survives_a_truncated_write(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "variables.json"
    write_atomic(path, json.dumps({"db_host": "pg-1", "threshold": 5}))
    service = SyncService(get_settings(), engine, [(FileVariableSource(path), True)])

    [status] = service.run_once()
    assert status.last_error is None and status.managed_keys == 2
    assert _values(engine) == {"db_host": "pg-1", "threshold": "5"}

    # A writer that is not atomic, caught half-way: nothing changes, the error is recorded.
    path.write_text('{"db_host": "pg-2", "thresh')
    [status] = service.run_once()
    assert status.consecutive_failures == 1 and not status.ok
    assert status.last_error is not None and "not valid JSON" in status.last_error
    assert "pg-2" not in status.last_error
    assert _values(engine) == {"db_host": "pg-1", "threshold": "5"}

    # The writer finishes (atomic replace this time): the new version applies, key removed.
    write_atomic(path, json.dumps({"db_host": "pg-2"}))
    [status] = service.run_once()
    assert status.last_error is None and status.consecutive_failures == 0
    assert status.managed_keys == 1
    assert _values(engine) == {"db_host": "pg-2"}
    with Session(engine) as session:
        [shown] = sync_status(session)
    assert shown.source_id == f"file:{path}" and shown.version == status.version


def test_unchanged_file_changes_nothing(sqlite_engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "variables.json"
    path.write_text(json.dumps({"a": "1"}))
    service = SyncService(get_settings(), sqlite_engine, [(FileVariableSource(path), False)])
    first = service.run_once()[0]
    second = service.run_once()[0]
    assert second.version == first.version
    assert second.last_success_at is not None and first.last_success_at is not None
    assert second.last_success_at >= first.last_success_at
    assert _values(sqlite_engine) == {"a": "1"}
