"""A try's log: the whole file as text, or followed live as Server-Sent Events.

``?follow=true`` streams ``event: log`` messages as the file grows and ends with
one ``event: end`` once the try is no longer queued or running (after a last read,
so nothing written before the end is lost). Reads go through a thread so a slow
disk or database never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path as FsPath

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.sse import format_sse_event
from sqlalchemy import select
from sqlalchemy.orm import Session

from ketch import operations
from ketch.api.rest.common import SessionDep, SettingsDep, TryNumber, error_responses
from ketch.db.models import TaskInstance
from ketch.states import TaskInstanceState

router = APIRouter(tags=["Task Log"])

POLL_SECONDS = 0.25
LIVENESS_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0
_CHUNK = 65536


def _inside(path: FsPath, folder: FsPath) -> FsPath | None:
    """Where ``path`` really is (symlinks followed), if that is inside ``folder``; else None.
    A log file a task replaced with a symlink to a server file must not be served."""
    try:
        real = path.resolve()
        return real if real.is_relative_to(folder.resolve()) else None
    except (OSError, RuntimeError):  # a name too long, a symlink loop
        return None


def _read_from(path: FsPath, offset: int, folder: FsPath | None = None) -> bytes:
    try:
        if folder is not None:
            real = _inside(path, folder)
            if real is None:
                return b""
            path = real
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(_CHUNK)
    except OSError:  # not written yet (or a name the file system refuses): nothing to send
        return b""


def _try_is_live_check(
    make_session: Callable[[], Session], ti_id: int, try_number: int
) -> Callable[[], str | None]:
    """A check returning None while try ``try_number`` may still write, else the TI's state.

    Each check opens its own short session: the request's session is closed once the
    streaming response starts.
    """

    def check() -> str | None:
        with make_session() as session:
            row = session.execute(
                select(TaskInstance.state, TaskInstance.try_number).where(TaskInstance.id == ti_id)
            ).first()
        if row is None:
            return "removed"
        live = {TaskInstanceState.QUEUED.value, TaskInstanceState.RUNNING.value}
        if row.try_number == try_number and row.state in live:
            return None
        return row.state or "none"

    return check


async def follow_log(
    path: FsPath, finished_state: Callable[[], str | None], folder: FsPath | None = None
) -> AsyncIterator[bytes]:
    """SSE bytes of the log at ``path`` until ``finished_state()`` says the try is over
    (only while ``path`` really lies inside ``folder``, when given)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offset, last_check, last_sent = 0, 0.0, time.monotonic()
    while True:
        chunk = await asyncio.to_thread(_read_from, path, offset, folder)
        if chunk:
            offset += len(chunk)
            text = decoder.decode(chunk)
            if text:
                last_sent = time.monotonic()
                yield format_sse_event(data_str=text, event="log")
            continue
        now = time.monotonic()
        if now - last_check >= LIVENESS_SECONDS:
            last_check = now
            state = await asyncio.to_thread(finished_state)
            if state is not None:
                async for tail in _drain(path, offset, decoder, folder):
                    yield tail
                yield format_sse_event(data_str=state, event="end")
                return
        if now - last_sent >= KEEPALIVE_SECONDS:
            last_sent = now
            yield b": ping\n\n"
        await asyncio.sleep(POLL_SECONDS)


async def _drain(
    path: FsPath, offset: int, decoder: codecs.IncrementalDecoder, folder: FsPath | None
) -> AsyncIterator[bytes]:
    """What the try wrote between the last read and its end."""
    while chunk := await asyncio.to_thread(_read_from, path, offset, folder):
        offset += len(chunk)
        if text := decoder.decode(chunk):
            yield format_sse_event(data_str=text, event="log")
    if text := decoder.decode(b"", final=True):
        yield format_sse_event(data_str=text, event="log")


@router.get(
    "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
    response_class=Response,
    responses={
        200: {
            "description": "The log as text, or with follow=true a text/event-stream",
            "content": {"text/plain": {}, "text/event-stream": {}},
        },
        **error_responses(404, _404="No such task instance or try, or no log file for it"),
    },
)
def get_log(
    dag_id: str,
    dag_run_id: str,
    task_id: str,
    try_number: TryNumber,
    session: SessionDep,
    settings: SettingsDep,
    follow: bool = False,
) -> Response:
    from ketch.executors.base import TryKey
    from ketch.worker.task_log import UnsafeLogPath, log_path

    ti = operations.get_task_instance(session, dag_id, dag_run_id, task_id)
    if try_number > ti.try_number:
        raise HTTPException(
            404,
            f"task {task_id!r} of run {dag_run_id!r} has no try {try_number} (tries: {ti.try_number})",
        )
    try:
        path = log_path(settings.log_folder, TryKey(dag_id, dag_run_id, task_id, try_number))
    except UnsafeLogPath as exc:  # an id from before run ids were checked: no file to read
        raise HTTPException(
            404,
            f"no log for try {try_number} of task {task_id!r} in run {dag_run_id!r}:"
            " these ids cannot name a file inside the log folder",
        ) from exc
    if follow:
        bind = session.get_bind()
        check = _try_is_live_check(lambda: Session(bind), ti.id, try_number)
        stream = follow_log(path, check, settings.log_folder)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    real = _inside(path, settings.log_folder)
    try:
        exists = real is not None and real.is_file()
    except OSError:  # e.g. a name longer than the file system allows: never written
        exists = False
    if real is None or not exists:
        raise HTTPException(
            404, f"no log for try {try_number} of task {task_id!r} in run {dag_run_id!r}"
        )
    return FileResponse(real, media_type="text/plain; charset=utf-8")
