"""The web application: REST API v1, the execution API for task tries, OpenAPI.

``create_app(settings)`` builds a FastAPI app bound to those settings: the shared
dependencies ``get_session`` and ``settings_dep`` read them from ``app.state``, so
an app built for a test database or a second configuration never falls back to
the process-wide defaults. It does not migrate the database: the commands that start
servers (``ketch web``, ``ketch scheduler``, ``ketch standalone``) do that first.
"""

from __future__ import annotations

from fastapi import FastAPI

from ketch.config import Settings


def create_app(settings: Settings) -> FastAPI:
    from ketch.api.execution import router as execution_router
    from ketch.api.execution_variables import router as execution_variables_router
    from ketch.api.rest import build_router
    from ketch.api.rest.errors import install_error_handlers
    from ketch.api.rest.variable_sync import metrics_router as variable_sync_metrics_router
    from ketch.db.engine import get_engine, session_factory

    app = FastAPI(
        title="ketch",
        summary="REST API of ketch, a workflow orchestrator (Airflow-style DAGs).",
        version=_version(),
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.session_factory = session_factory(get_engine(settings.database_url))
    install_error_handlers(app)
    # The execution API first: task tries call it several times each, so their requests
    # should not be matched against every REST route before reaching it.
    app.include_router(execution_router)
    app.include_router(execution_variables_router)
    app.include_router(build_router())
    app.include_router(variable_sync_metrics_router)  # /metrics (Prometheus)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ketch")
    except PackageNotFoundError:
        return "0.0.0"
