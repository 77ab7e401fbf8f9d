"""``GET /api/v1/health`` commits a write: a database that answers reads but refuses
writes (read-only, disk full) is unhealthy, with the reason, on both backends."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from ketch.api.app import create_app
from ketch.config import get_settings
from ketch.db.engine import dispose_engines, get_engine, session_factory
from ketch.db.migrate import migrate
from ketch.db.models import HealthProbe
from tests.support.postgres import PostgresServer, free_port
from tests.support.web import local_client

HEALTH = "/api/v1/health"


def probe_time(engine: Engine) -> datetime:
    with Session(engine) as session:
        return session.scalars(select(HealthProbe.checked_at)).one()


def test_health_commits_its_probe_row(engine: Engine) -> None:
    before = probe_time(engine)
    with local_client(create_app(get_settings())) as client:
        answer = client.get(HEALTH)
        assert (answer.status_code, answer.json()) == (
            200,
            {"status": "ok", "database": "ok", "log_archive": "ok"},
        )
        after = probe_time(engine)
        assert after > before
        with Session(engine) as session:  # the row is gone: the probe puts it back
            session.query(HealthProbe).delete()
            session.commit()
        assert client.get(HEALTH).status_code == 200
        assert probe_time(engine) >= after


def test_health_reports_postgresql_in_read_only_mode(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    url = postgres_server.create_database("health_read_only")
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", url)
    get_settings.cache_clear()
    engine = get_engine(url)
    migrate(engine)

    def read_only(on: bool) -> None:
        with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
            value = "on" if on else "off"
            admin.execute(
                f'ALTER DATABASE "health_read_only" SET default_transaction_read_only = {value}'
            )
        engine.dispose()  # the setting applies to new sessions

    with local_client(create_app(get_settings())) as client:
        assert client.get(HEALTH).status_code == 200
        read_only(True)
        answer = client.get(HEALTH)
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "unhealthy",
            "database": "writes refused: cannot execute UPDATE in a read-only transaction",
            "log_archive": "ok",
        }
        read_only(False)
        assert client.get(HEALTH).status_code == 200


def test_health_reports_an_unreachable_database(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", url)
    get_settings.cache_clear()
    with local_client(create_app(get_settings())) as client:
        answer = client.get(HEALTH)
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "unhealthy"
    assert body["database"].startswith("connection failed: ")  # not "writes refused"
    assert "Connection refused" in body["database"]


def test_health_reports_a_sqlite_file_opened_read_only(sqlite_engine: Engine) -> None:
    """SQLite refuses writes to a read-only open even for root (unlike chmod)."""
    path = sqlite_engine.url.database
    read_only = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    app = create_app(get_settings())
    app.state.session_factory = session_factory(read_only)
    with local_client(app) as client:
        answer = client.get(HEALTH)
    read_only.dispose()
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "unhealthy",
        "database": "writes refused: attempt to write a readonly database",
        "log_archive": "ok",
    }


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 4 MiB tmpfs (root with CAP_SYS_ADMIN only): a disk that really fills up."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder = Path(tempfile.mkdtemp(prefix="ketch-small-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        dispose_engines()  # close the database files, or the unmount is refused
        subprocess.run(["umount", str(folder)], check=False)
        with suppress(OSError):
            folder.rmdir()


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_health_reports_sqlite_on_a_full_disk(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{small_disk / 'ketch.db'}"
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", url)
    get_settings.cache_clear()
    migrate(get_engine(url))
    with local_client(create_app(get_settings())) as client:
        assert client.get(HEALTH).status_code == 200  # the web's pool has its connection
        filler = fill(small_disk)
        answer = client.get(HEALTH)
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "unhealthy",
            "database": "writes refused: database or disk is full",
            "log_archive": "ok",
        }
        filler.unlink()
        assert client.get(HEALTH).status_code == 200
