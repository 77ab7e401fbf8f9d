"""The schema migrates on both backends, idempotently, and matches the models."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session

from ketch.db.migrate import migrate
from ketch.db.models import Base, DagModel, Pool


def test_migrate_is_idempotent_and_creates_default_pool(engine: Engine) -> None:
    migrate(engine)  # second time: nothing to do, no error
    assert "task_instance" in inspect(engine).get_table_names()
    with Session(engine) as session:
        pool = session.get(Pool, "default_pool")
        assert pool is not None and pool.slots == 128


def test_models_match_migrations(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree; add an Alembic revision: {diff}"


def test_datetimes_read_back_timezone_aware(engine: Engine) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with Session(engine) as session:
        session.add(
            DagModel(
                dag_id="d",
                fileloc="/x.py",
                relative_fileloc="x.py",
                serialized={},
                serialized_hash="h",
                last_parsed_at=when,
            )
        )
        session.commit()
    with Session(engine) as session:
        got = session.get(DagModel, "d")
        assert got is not None and got.last_parsed_at == when
        assert got.last_parsed_at.tzinfo is not None


def test_naive_datetime_is_refused(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(
            DagModel(
                dag_id="n",
                fileloc="/x.py",
                relative_fileloc="x.py",
                serialized={},
                serialized_hash="h",
                last_parsed_at=datetime(2026, 1, 1),
            )
        )
        with pytest.raises(Exception, match="naive datetime"):
            session.commit()


def test_sqlite_file_and_its_folder_are_owner_only(tmp_path: Path) -> None:
    import stat

    from ketch.db.engine import get_engine
    from ketch.db.migrate import migrate

    db_file = tmp_path / "fresh_home" / "ketch.db"
    migrate(get_engine(f"sqlite:///{db_file}"))
    assert stat.S_IMODE(db_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_file.parent.stat().st_mode) == 0o700
    for sidecar in db_file.parent.glob("ketch.db-*"):  # -wal, -shm
        assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600
