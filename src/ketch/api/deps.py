"""FastAPI dependencies shared by the routers.

They read what ``create_app(settings)`` put on ``app.state`` rather than being
swapped with ``dependency_overrides``: FastAPI re-inspects an override's signature on
every request, which cost the execution API a third of its CPU time.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from ketch.config import Settings, get_settings


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; the endpoint commits what it changes."""
    factory = getattr(request.app.state, "session_factory", None)
    if factory is None:  # a bare app that only mounts a router (tests): the configured DB
        from ketch.db.engine import get_engine, session_factory

        factory = request.app.state.session_factory = session_factory(get_engine())
    session: Session = factory()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def settings_dep(request: Request) -> Settings:
    """The app's settings (async: no I/O, so no trip through the thread pool)."""
    settings: Settings | None = getattr(request.app.state, "settings", None)
    return settings if settings is not None else get_settings()
