"""How errors from :mod:`ketch.operations` look over HTTP.

404 for an unknown DAG, run or task (the message names it), 409 for a run that
exists already, 422 for a bad value in the shape FastAPI uses for body validation
errors (``{"detail": [{"loc": ["body", ...], "msg": ...}]}``) so clients parse one
format whichever layer refused the request.

405 (a method the path does not have, ``OPTIONS`` included) carries an ``Allow`` header
naming every method of the path, as the OpenAPI document lists them: Starlette's own
names only the methods of the first route whose path matched.

A JSON body may carry a lone surrogate (``"\\ud800"``): text that cannot be stored or
echoed. Storing it is a 422 naming the problem, and a validation error that echoes it
is escaped rather than failing to encode (both used to be 500s). A value PostgreSQL
refuses (a NUL character, a string longer than its column, a number out of range) is a
422 too, and so is an int SQLite's driver cannot bind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path, get_route_path

from ketch import operations
from ketch.exceptions import ParamValidationError


def _detail(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


def _validation(loc: list[str], message: str, kind: str) -> JSONResponse:
    return JSONResponse(
        status_code=422, content={"detail": [{"loc": loc, "msg": message, "type": kind}]}
    )


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    message = str(exc)
    if isinstance(exc, operations.DagNotFound):
        # A DAG missing because its file failed to import: say so, and name the file.
        from starlette.concurrency import run_in_threadpool

        from ketch.dag_processing.hints import import_error_hint_for_app

        message += await run_in_threadpool(import_error_hint_for_app, request.app.state, exc.dag_id)
    return _detail(404, message)


async def _conflict(_request: Request, exc: Exception) -> JSONResponse:
    return _detail(409, str(exc))


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, operations.InvalidRequest)
    return _validation(["body", exc.field], exc.message, "value_error")


async def _param_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ParamValidationError)
    return _validation(["body", "conf", exc.field], exc.message, "param_validation")


def _routes(app: FastAPI) -> list[tuple[str, set[str]]]:
    """(path, methods) of every HTTP route, through included routers too."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # a FastAPI that keeps included routes flat in app.routes
        routes: Iterable[Any] = app.routes
    else:
        routes = iter_route_contexts(app.routes)
    out = []
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path and methods:
            out.append((path, set(methods)))
    return out


@lru_cache(maxsize=8)
def _compiled(path: str) -> re.Pattern[str]:
    return compile_path(path)[0]


def allowed_methods(request: Request) -> list[str]:
    """The methods of the routes whose path matches the request's. A path without
    parameters wins over a template (``/variables/syncStatus`` over ``/variables/{key}``),
    as OpenAPI matches concrete paths first."""
    concrete: set[str] = set()
    templated: set[str] = set()
    path = get_route_path(request.scope)
    for template, methods in _routes(request.app):
        if _compiled(template).match(path):
            (templated if "{" in template else concrete).update(methods)
    return sorted(concrete or templated)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allow = ", ".join(allowed_methods(request))
        return JSONResponse(
            {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow}
        )
    return await http_exception_handler(request, exc)


async def _request_invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    try:
        return await request_validation_exception_handler(request, exc)
    except UnicodeEncodeError:  # the input it echoes holds a lone surrogate
        content = jsonable_encoder({"detail": exc.errors()})
        return Response(json.dumps(content, ensure_ascii=True), 422, media_type="application/json")


async def _unencodable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UnicodeEncodeError)
    if "surrogate" not in exc.reason:
        raise exc  # not text from the request: a mistake, a 500 as before
    bad = exc.object[exc.start : exc.end]
    where = ", ".join(f"U+{ord(c):04X}" for c in bad[:3] if isinstance(bad, str))
    return _validation(
        ["body"],
        f"text must be valid Unicode: a lone surrogate ({where}) cannot be stored",
        "unicode_error",
    )


async def _unstorable(request: Request, exc: Exception) -> Response:
    """A value the database refuses to store or compare: a NUL character in text, a
    string longer than its column, a number out of range (PostgreSQL; SQLite takes
    them). The request's fault, so 422 with the database's reason, not a 500."""
    from ketch.db.outage import is_db_unavailable, reason

    if is_db_unavailable(exc):
        from ketch.api.app import _database_error

        return await _database_error(request, exc)
    return _validation(["request"], f"a value cannot be stored: {reason(exc)}", "data_error")


async def _too_large(_request: Request, exc: Exception) -> Response:
    """SQLite's driver refuses an int beyond 64 bits before the statement runs."""
    if "too large to convert" not in str(exc):
        raise exc  # not a value from the request: a 500 as before
    return _validation(["request"], f"a value cannot be stored: {exc}", "data_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(UnicodeEncodeError, _unencodable)
    app.add_exception_handler(DataError, _unstorable)
    app.add_exception_handler(OverflowError, _too_large)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(operations.NotFound, _not_found)
    app.add_exception_handler(operations.DagRunAlreadyExists, _conflict)
    app.add_exception_handler(operations.InvalidRequest, _invalid)
    app.add_exception_handler(ParamValidationError, _param_invalid)
