"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.orm import Session

from ketch.config import Settings, get_settings
from ketch.db.engine import get_engine, session_factory


def get_session() -> Iterator[Session]:
    """A session per request; the endpoint commits what it changes."""
    session = session_factory(get_engine())()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def settings_dep() -> Settings:
    return get_settings()
