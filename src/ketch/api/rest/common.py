"""Dependencies, bounds and documented error responses shared by the REST routers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request, status
from sqlalchemy.orm import Session

from ketch.api.deps import get_session, settings_dep
from ketch.api.schemas.common import ErrorResponse
from ketch.config import Settings

SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]

MAX_PAGE_LIMIT = 1000
MAX_INT32 = 2**31 - 1
"""The largest value of an ``Integer`` column on PostgreSQL (and so of any count, id or
try number ketch stores): a bigger number is a 422, never a database error (500)."""

Limit = Annotated[
    int, Query(ge=1, le=MAX_PAGE_LIMIT, description="Page size (default 50, as Airflow's).")
]
Offset = Annotated[int, Query(ge=0, le=MAX_INT32, description="Entries to skip.")]
TryNumber = Annotated[int, Path(ge=1, le=MAX_INT32, description="The try, from 1.")]
RowId = Annotated[int, Path(ge=1, le=MAX_INT32)]

_DESCRIPTIONS = {
    400: "The request body could not be read (not UTF-8 JSON)",
    401: "Not authenticated (no or a bad API token, session or loopback address)",
    403: "Forbidden: the caller's role may not do this",
    404: "Not found: the message names what is missing",
    406: "Not acceptable: the Accept header names no type the route returns",
    409: "Conflict: it exists already",
    503: "The metadata database is unavailable (retry after the Retry-After seconds)",
}


def error_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each ``{"detail": "..."}``;
    ``descriptions`` overrides one by name (``_404="unknown pool"``)."""
    return {
        status: {
            "model": ErrorResponse,
            "description": descriptions.get(f"_{status}", _DESCRIPTIONS[status]),
        }
        for status in statuses
    }


def paths_of_their_own(param: str, names: frozenset[str]) -> Any:
    """A dependency for ``/things/{param}`` routes when ``/things/<name>`` is a path of its
    own (``/variables/syncStatus``, ``/connections/import``): as OpenAPI matches a concrete
    path before a template, a method that path lacks is 405 (its ``Allow`` names the
    concrete path's methods), not a read or write of a thing by that name. A dependency,
    so it answers before the body is validated."""

    def check(request: Request) -> None:
        if request.path_params.get(param) in names:
            raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, "Method Not Allowed")

    return Depends(check)
