"""Alembic migrations, run from code (no alembic.ini needed by users).

``ketch db migrate`` and every server start call :func:`migrate`; it is idempotent.
"""

from __future__ import annotations

import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from ketch.db.engine import check_connection
from ketch.db.models import DEFAULT_POOL_NAME, DEFAULT_POOL_SLOTS, Pool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, *, lock_wait: float = 60.0) -> None:
    """Bring the schema to the newest revision and make sure the default pool exists.

    ``ketch scheduler`` and ``ketch web`` may start together on one SQLite file; the
    second migration then meets "database is locked" and waits for the first.
    """
    from sqlalchemy.orm import Session

    check_connection(engine)
    deadline = time.monotonic() + lock_wait
    delay = 0.1
    while True:
        try:
            command.upgrade(alembic_config(engine), "head")
            break
        except OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    with Session(engine) as session:
        if session.get(Pool, DEFAULT_POOL_NAME) is None:
            session.add(
                Pool(pool=DEFAULT_POOL_NAME, slots=DEFAULT_POOL_SLOTS, description="Default pool")
            )
            session.commit()
