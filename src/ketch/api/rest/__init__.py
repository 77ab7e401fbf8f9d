"""The REST API v1 (``/api/v1``): one router module per resource.

Endpoints are thin: they parse the request, call :mod:`ketch.operations` (the
same functions the CLI calls), commit, and map rows to :mod:`ketch.api.schemas`.
Errors from operations become HTTP errors in :mod:`ketch.api.rest.errors`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ketch.api.rest import (
    audit_log,
    connections,
    dag_runs,
    dag_sources,
    dags,
    health,
    import_errors,
    logs,
    pools,
    task_instances,
    tokens,
    users,
    variable_sync,
    variables,
    xcom,
)
from ketch.api.rest.common import error_responses, paths_of_their_own
from ketch.auth.principal import authorize


def build_router() -> APIRouter:
    """All REST routers under ``/api/v1``, each request authorized by the role policy.

    Every route documents 401 and 403 (authorization) and 503 (database unavailable);
    each module documents the other statuses its routes answer.
    """
    router = APIRouter(
        prefix="/api/v1",
        dependencies=[Depends(authorize)],
        responses=error_responses(401, 403, 503),
    )
    for module in (
        health,
        dags,
        dag_sources,
        dag_runs,
        task_instances,
        xcom,
        logs,
        import_errors,
        pools,
    ):
        router.include_router(module.router)
    router.include_router(task_instances.mapped_router)  # after xcomEntries
    router.include_router(variable_sync.router)  # before variables: syncStatus is no key
    router.include_router(variables.router)
    router.include_router(  # the statuses its routes answer, and /connections/import
        connections.router,
        responses=error_responses(400, 404, 409),
        dependencies=[paths_of_their_own("conn_id", frozenset({"import"}))],
    )
    for module in (tokens, users, audit_log):
        router.include_router(module.router)
    return router
