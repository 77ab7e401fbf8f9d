"""Every route of the UI in one router: ``create_app`` includes this one."""

from __future__ import annotations

from fastapi import APIRouter

from ketch.web import (
    dag_page,
    dags_page,
    graph,
    grid,
    pages,
    resource_pages,
    run_page,
    source_page,
    static_files,
    try_page,
    variables_page,
)

router = APIRouter(include_in_schema=False)
for module in (
    pages,
    static_files,
    dags_page,
    grid,
    graph,
    source_page,
    dag_page,
    run_page,
    try_page,
    variables_page,
    resource_pages,
):
    router.include_router(module.router)
