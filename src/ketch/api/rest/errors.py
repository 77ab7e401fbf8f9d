"""How errors from :mod:`ketch.operations` look over HTTP.

404 for an unknown DAG, run or task (the message names it), 409 for a run that
exists already, 422 for a bad value in the shape FastAPI uses for body validation
errors (``{"detail": [{"loc": ["body", ...], "msg": ...}]}``) so clients parse one
format whichever layer refused the request.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(operations.NotFound, _not_found)
    app.add_exception_handler(operations.DagRunAlreadyExists, _conflict)
    app.add_exception_handler(operations.InvalidRequest, _invalid)
    app.add_exception_handler(ParamValidationError, _param_invalid)
