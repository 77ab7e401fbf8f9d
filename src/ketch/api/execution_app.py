"""The execution API alone, for ``[api] execution_port``.

Task tries need nothing of the web server but ``/execution``; served on a port of its
own, a NetworkPolicy can let worker pods reach that port and nothing else (not the UI,
not the REST API). ``create_execution_app(settings)`` builds that app: the execution
routers only, authenticated by try tokens, with the same database-outage handling
(503 with ``Retry-After``, logged once per outage) and error handlers as
:func:`ketch.api.app.create_app`, and no OpenAPI or docs pages. ``ketch web`` and
``ketch standalone`` serve it next to ``create_app(settings, include_execution=False)``
when ``execution_port`` is set (``ketch.standalone``).
"""

from __future__ import annotations

from fastapi import FastAPI

from ketch.api.app import install_database_outage_handling
from ketch.config import Settings


def create_execution_app(settings: Settings) -> FastAPI:
    """An app serving ``/execution`` only (everything else is 404)."""
    from ketch.api.execution import router as execution_router
    from ketch.api.rest.errors import install_error_handlers
    from ketch.db.engine import get_engine, session_factory

    app = FastAPI(
        title="ketch execution API",
        openapi_url=None,  # nothing here for a browser; task tries know the routes
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory(get_engine(settings.database_url))
    install_database_outage_handling(app)
    install_error_handlers(app)
    app.include_router(execution_router)
    return app
