"""A run's parsed DAG for the execution API: what a starting try's context and a
finishing try's retry settings are read from. Runs are pinned to a content hash, so a
parsed DAG never goes stale: each version is parsed once per process."""

from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy.orm import Session

from ketch.db.models import DagRun
from ketch.scheduler.dag_cache import DagCache
from ketch.serialization import SerializedDag, SerializedTask

# Runs are pinned to a content hash, so a parsed DAG never goes stale: parse each once
# per process (a big DAG's JSON costs milliseconds per try otherwise).
# One cache per database (tests run many databases in one process).
_dag_caches: dict[str, DagCache] = {}


def serialized_dag(session: Session, run: DagRun) -> SerializedDag:
    url = str(session.get_bind().engine.url)
    cache = _dag_caches.get(url) or _dag_caches.setdefault(url, DagCache(max_entries=64))
    info = cache.get(session, run.dag_hash)
    if info is None:
        raise HTTPException(500, f"DAG version {run.dag_hash} of run {run.run_id} is missing")
    return info.dag


def serialized_task(session: Session, run: DagRun, task_id: str) -> SerializedTask:
    dag = serialized_dag(session, run)
    if task_id in dag.tasks:
        return dag.task(task_id)
    # The run's version always has the task; a bare default keeps the outcome recordable.
    return SerializedTask(task_id=task_id, kind="python")
