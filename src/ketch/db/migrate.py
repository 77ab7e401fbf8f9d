"""Alembic migrations, run from code (no alembic.ini needed by users).

``ketch db migrate`` and every server start call :func:`migrate`; it is idempotent.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from ketch.db.engine import check_connection
from ketch.db.models import DEFAULT_POOL_NAME, DEFAULT_POOL_SLOTS, Pool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision and make sure the default pool exists."""
    from sqlalchemy.orm import Session

    check_connection(engine)
    command.upgrade(alembic_config(engine), "head")
    with Session(engine) as session:
        if session.get(Pool, DEFAULT_POOL_NAME) is None:
            session.add(
                Pool(pool=DEFAULT_POOL_NAME, slots=DEFAULT_POOL_SLOTS, description="Default pool")
            )
            session.commit()
