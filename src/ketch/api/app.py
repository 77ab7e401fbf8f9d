"""The web application: REST API v1, the execution API for task tries, OpenAPI.

``create_app(settings)`` builds a FastAPI app bound to those settings: the shared
dependencies ``get_session`` and ``settings_dep`` read them from ``app.state``, so
an app built for a test database or a second configuration never falls back to
the process-wide defaults. It does not migrate the database: the commands that start
servers (``ketch web``, ``ketch scheduler``, ``ketch standalone``) do that first.

While the database is unavailable (unreachable, or refusing writes: read-only, disk
full) every route answers 503 ``{"detail": "database unavailable: <reason>"}`` with a
``Retry-After`` header instead of a 500 and a traceback per request; the outage is
logged once when it begins and once when a commit succeeds again (``app.state.db_outage``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ketch.auth.install import install_auth
from ketch.auth.oidc.routes import install as install_sign_in
from ketch.auth.principal import authorize
from ketch.config import Settings
from ketch.db.outage import OutageTracker, is_db_unavailable, reason
from ketch.web.routes import router as web_router

log = logging.getLogger("ketch.api")

RETRY_AFTER_SECONDS = 1


def create_app(settings: Settings, *, include_execution: bool = True) -> FastAPI:
    """The web app; without the execution API when it is served on its own port."""
    from ketch.api.execution import router as execution_router
    from ketch.api.rest import build_router
    from ketch.api.rest.errors import install_error_handlers
    from ketch.api.rest.variable_sync import metrics_router as variable_sync_metrics_router
    from ketch.db.engine import get_engine, session_factory

    app = FastAPI(
        title="ketch",
        summary="REST API of ketch, a workflow orchestrator (Airflow-style DAGs).",
        version=_version(),
        # Served by ketch.auth.install behind authorization, not by FastAPI openly.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory(get_engine(settings.database_url))
    install_database_outage_handling(app)
    install_error_handlers(app)
    # The execution API first: task tries call it several times each, so their requests
    # should not be matched against every REST route before reaching it.
    if include_execution:
        app.include_router(execution_router)
    app.include_router(build_router())
    app.include_router(  # /metrics (Prometheus)
        variable_sync_metrics_router, dependencies=[Depends(authorize)]
    )
    install_sign_in(app, settings)  # /login, the callback, /logout (raises OidcConfigError)
    app.include_router(web_router)  # the UI's pages (signed in) and /static (public)
    install_auth(app, settings)
    return app


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """At start-up, with every module imported and the app built: what the first requests
    would build lazily is built now, then the heap so far is frozen out of the garbage
    collector's full passes (the p99 of the UI's pages; see :mod:`ketch.api.heap`)."""
    from ketch.api.heap import freeze_startup_heap, warm_up

    warm_up()
    freeze_startup_heap()
    yield


def install_database_outage_handling(app: FastAPI) -> None:
    """503 for every route while the database is unavailable, logged once per outage.

    The outage ends with the first commit that succeeds (a heartbeat, the health
    check's write probe): a read alone does not prove that a database which refused
    writes takes them again.
    """
    outage = OutageTracker(log, "database")
    app.state.db_outage = outage
    factory = getattr(app.state, "session_factory", None)
    if factory is not None:

        def _committed(_session: Session) -> None:
            outage.succeeded()

        event.listen(factory, "after_commit", _committed)
    app.add_exception_handler(DBAPIError, _database_error)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not is_db_unavailable(exc):
        raise exc  # a mistake, not an outage: a 500 with its traceback, as before
    why = reason(exc)
    outage: OutageTracker | None = getattr(request.app.state, "db_outage", None)
    if outage is not None:
        outage.failed(why)
    return JSONResponse(
        status_code=503,
        content={"detail": f"database unavailable: {why}"},
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ketch")
    except PackageNotFoundError:
        return "0.0.0"
