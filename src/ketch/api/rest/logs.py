"""A try's log: in byte ranges, its last lines, as a download, or followed live (SSE).

Where the bytes come from follows ``ketch.logs.reader``'s fixed order (live file, pod,
archive); the ``X-Log-Source`` header names it and ``X-Log-Complete`` says whether the
log is known to be whole. Nothing is loaded whole: a range is read, a full read or a
download is streamed in 64 KiB pieces.

``tail_lines`` picks where the answer starts (where the last N lines begin, or
``offset`` if that is further on) and ``limit`` bounds the bytes from there, so
``?tail_lines=100&limit=4096`` is the first 4 KiB of the last 100 lines and
``X-Log-Next-Offset`` says where to go on.

``?follow=true`` streams ``event: log`` messages from ``offset`` and ends with one
``event: end`` (the try's final state) once the try is over and everything was read;
a follower of a queued try waits for it to start. Each step runs on the thread pool and
is short, so a slow disk, S3 or database never blocks the event loop.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.sse import format_sse_event
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import iterate_in_threadpool

from ketch import operations
from ketch.api.rest.common import SessionDep, TryNumber, error_responses
from ketch.db.models import TaskInstance
from ketch.executors.base import TryKey
from ketch.logs.access import LogAccess
from ketch.logs.reader import LogReader, LogUnavailable, Waiting
from ketch.states import TaskInstanceState

router = APIRouter(tags=["Task Log"])

KEEPALIVE_SECONDS = 15.0
MAX_LIMIT = 16 * 1024 * 1024
_LIVE = {TaskInstanceState.QUEUED.value, TaskInstanceState.RUNNING.value}


def log_access(request: Request) -> LogAccess:
    """The process's :class:`LogAccess`, made on first use."""
    access: LogAccess | None = getattr(request.app.state, "log_access", None)
    if access is None:
        access = request.app.state.log_access = LogAccess(request.app.state.settings)
    return access


def _state_check(
    make_session: Callable[[], Session], ti_id: int, try_number: int
) -> Callable[[], str | None]:
    """None while try ``try_number`` may still write, else the task instance's state.
    Each check opens its own short session (the request's closes once streaming starts)."""

    def check() -> str | None:
        with make_session() as session:
            row = session.execute(
                select(TaskInstance.state, TaskInstance.try_number).where(TaskInstance.id == ti_id)
            ).first()
        if row is None:
            return "removed"
        if row.try_number == try_number and row.state in _LIVE:
            return None
        return row.state or "none"

    return check


def sse_events(steps: Iterator[bytes | str | Waiting]) -> Iterator[bytes]:
    """SSE bytes of :meth:`LogReader.follow`'s steps (UTF-8 decoded incrementally:
    invalid bytes become U+FFFD; a character split across reads is kept whole). Why a
    try's pod has not started is a ``waiting`` event, not a log line: it is not part of
    the log."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    last_sent = time.monotonic()
    for step in steps:
        if isinstance(step, Waiting):
            last_sent = time.monotonic()
            yield format_sse_event(data_str=step.reason, event="waiting")
            continue
        if isinstance(step, str):
            if tail := decoder.decode(b"", final=True):
                yield format_sse_event(data_str=tail, event="log")
            yield format_sse_event(data_str=step, event="end")
            return
        if step and (text := decoder.decode(step)):
            last_sent = time.monotonic()
            yield format_sse_event(data_str=text, event="log")
        elif time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            last_sent = time.monotonic()
            yield b": ping\n\n"
        else:
            yield b""  # hand the thread back between polls (a disconnect is noticed)


async def _async(steps: Iterator[bytes]) -> AsyncIterator[bytes]:
    async for item in iterate_in_threadpool(steps):
        if item:
            yield item


def _headers(source: str, complete: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Log-Source": source, "X-Log-Complete": str(complete).lower(), **(extra or {})}


@router.get(
    "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
    response_class=Response,
    responses={
        200: {
            "description": "The log as text (a range, the last lines, a download), or with "
            "follow=true a text/event-stream",
            "content": {"text/plain": {}, "text/event-stream": {}},
        },
        **error_responses(
            404,
            503,
            _404="No such task instance or try, or no source has its log (the message says why)",
            _503="The log archive is unavailable and no other source has the log",
        ),
    },
)
def get_log(
    request: Request,
    dag_id: str,
    dag_run_id: str,
    task_id: str,
    try_number: TryNumber,
    session: SessionDep,
    follow: bool = False,
    offset: Annotated[int, Query(ge=0, le=2**62, description="First byte to return.")] = 0,
    limit: Annotated[
        int | None, Query(ge=1, le=MAX_LIMIT, description="At most this many bytes.")
    ] = None,
    tail_lines: Annotated[
        int | None,
        Query(
            ge=1,
            le=1_000_000,
            description="Only the last N lines: the answer starts where they begin (or at"
            " offset, if that is further on); with limit, at most limit bytes from there.",
        ),
    ] = None,
    download: bool = False,
    map_index: Annotated[
        int, Query(ge=-1, le=2**31 - 1, description="The mapped instance (-1: not mapped).")
    ] = -1,
) -> Response:
    ti = operations.get_task_instance(session, dag_id, dag_run_id, task_id, map_index)
    if try_number > ti.try_number:
        raise HTTPException(
            404,
            f"task {task_id!r} of run {dag_run_id!r} has no try {try_number} (tries: {ti.try_number})",
        )
    key = TryKey(dag_id, dag_run_id, task_id, try_number, map_index)
    state = ti.state if try_number == ti.try_number else "ended"
    live = try_number == ti.try_number and ti.state in _LIVE
    reader = log_access(request).reader()
    if follow:
        bind = session.get_bind()
        check = _state_check(lambda: Session(bind), ti.id, try_number)
        steps = sse_events(reader.follow(key, offset, check))
        return StreamingResponse(
            _async(steps),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        return _read(reader, key, live, state, offset, limit, tail_lines, download)
    except LogUnavailable as exc:
        raise HTTPException(exc.status, str(exc)) from exc


def _read(
    reader: LogReader,
    key: TryKey,
    live: bool,
    state: str | None,
    offset: int,
    limit: int | None,
    tail_lines: int | None,
    download: bool,
) -> Response:
    if limit is not None and not download:
        piece = reader.read(key, live, offset, limit, state=state, tail_lines=tail_lines)
        headers = {
            "X-Log-Offset": str(piece.offset),
            "X-Log-Next-Offset": str(piece.next_offset),
        }
        return Response(
            piece.data,
            media_type="text/plain; charset=utf-8",
            headers=_headers(piece.source, piece.complete, headers),
        )
    source = reader.best(key, live, state=state)
    if tail_lines is not None:
        offset = max(offset, reader.tail_offset(source, tail_lines))
    pieces = reader.pieces(source, offset)
    headers = _headers(source.name, _safe_complete(source), {"X-Log-Offset": str(offset)})
    if download:
        name = f"{key.dag_id}-{key.run_id}-{key.task_id}-{key.try_number}.log"
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)
        headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    return StreamingResponse(
        _async(pieces), media_type="text/plain; charset=utf-8", headers=headers
    )


def _safe_complete(source: object) -> bool:
    try:
        return bool(source.complete())  # type: ignore[attr-defined]
    except Exception:
        return False
