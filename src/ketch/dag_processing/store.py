"""Database writes of the DAG processor: one transaction per parsed file.

Rules (Airflow's, where it has them):

- a new DAG starts paused unless ``is_paused_upon_creation`` says otherwise
  (default ``[core] dags_are_paused_at_creation``); an existing DAG keeps its pause;
- an unchanged serialized hash writes nothing but ``last_parsed_at``;
- a new or changed DAG gets ``needs_next_dagrun`` and a ``dag_version`` row by hash;
- a file that fails keeps its stored DAGs and gets an ``import_error`` row;
- a dag_id already active in another file is an import error of the newcomer;
- the file's source goes to ``dag_code`` in the same transaction when its hash changed
  (:mod:`ketch.dag_processing.dag_code`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ketch.dag_processing.dag_code import store_source
from ketch.db.engine import session_scope
from ketch.db.models import DagModel, DagVersion, ImportError_

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ketch.dag_processing.processor import FileResult


@dataclass
class StoreOutcome:
    changed: bool = False
    error: str | None = None
    duplicate: bool = False  # some DAG was refused because another file has it
    stored: int = 0
    error_cleared: bool = False  # the file had an import error row, now removed


def dag_hash(serialized: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(serialized, sort_keys=True).encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def store_result(engine: Engine, result: FileResult, *, paused_at_creation: bool) -> StoreOutcome:
    """Write one file's parse outcome in one transaction."""
    path = str(result.path)
    with session_scope(engine) as session:
        if not result.ok:
            assert result.error is not None
            return StoreOutcome(_set_import_error(session, path, result.error), result.error)
        outcome = StoreOutcome()
        errors: list[str] = []
        kept: set[str] = set()
        for data in result.dags:
            existing = session.get(DagModel, data["dag_id"])
            if _owned_elsewhere(existing, path):
                assert existing is not None
                errors.append(
                    f"DAG {existing.dag_id!r} is defined in both {existing.fileloc} and {path}; "
                    f"the one in {existing.fileloc} is kept"
                )
                continue
            kept.add(data["dag_id"])
            outcome.changed |= _upsert_dag(session, existing, data, paused_at_creation)
            outcome.stored += 1
        outcome.changed |= _deactivate(session, DagModel.fileloc == path, keep=kept)
        if kept:
            store_source(session, result.path)
        if errors:
            outcome.error = "\n".join(errors)
            outcome.duplicate = True
            outcome.changed |= _set_import_error(session, path, outcome.error)
        else:
            outcome.error_cleared = _clear_import_error(session, path)
            outcome.changed |= outcome.error_cleared
        return outcome


def store_dag(session: Session, data: dict[str, Any], *, paused_at_creation: bool) -> None:
    """Insert or update one serialized DAG (``ketch dags test`` stores the DAG it runs,
    without touching the other DAGs of its file)."""
    _upsert_dag(session, session.get(DagModel, data["dag_id"]), data, paused_at_creation)


def _owned_elsewhere(existing: DagModel | None, path: str) -> bool:
    return (
        existing is not None
        and existing.is_active
        and existing.fileloc != path
        and os.path.exists(existing.fileloc)
    )


def _upsert_dag(
    session: Session, existing: DagModel | None, data: dict[str, Any], paused_at_creation: bool
) -> bool:
    now = _now()
    digest = dag_hash(data)
    if existing is not None:
        existing.last_parsed_at = now
        if existing.serialized_hash == digest and existing.is_active:
            return False
    fields: dict[str, Any] = {
        "fileloc": data["fileloc"],
        "relative_fileloc": data["relative_fileloc"],
        "is_active": True,
        "serialized": data,
        "serialized_hash": digest,
        "description": data.get("description"),
        "tags": list(data.get("tags") or []),
        "schedule_summary": (data.get("schedule") or {}).get("summary"),
        "last_parsed_at": now,
        "needs_next_dagrun": True,
    }
    if existing is None:
        wanted = data.get("is_paused_upon_creation")
        paused = paused_at_creation if wanted is None else bool(wanted)
        session.add(DagModel(dag_id=data["dag_id"], is_paused=paused, **fields))
    else:
        for key, value in fields.items():
            setattr(existing, key, value)
    if session.get(DagVersion, digest) is None:
        session.add(
            DagVersion(dag_hash=digest, dag_id=data["dag_id"], serialized=data, created_at=now)
        )
    return True


def _deactivate(session: Session, where: Any, *, keep: set[str] | None = None) -> bool:
    changed = False
    for dag in session.scalars(select(DagModel).where(where, DagModel.is_active.is_(True))):
        if keep is None or dag.dag_id not in keep:
            dag.is_active = False
            changed = True
    return changed


def _set_import_error(session: Session, path: str, stacktrace: str) -> bool:
    row = session.scalars(select(ImportError_).where(ImportError_.filename == path)).first()
    if row is None:
        session.add(ImportError_(filename=path, stacktrace=stacktrace, timestamp=_now()))
        return True
    if row.stacktrace == stacktrace:
        return False
    row.stacktrace, row.timestamp = stacktrace, _now()
    return True


def _clear_import_error(session: Session, path: str) -> bool:
    return bool(
        session.execute(delete(ImportError_).where(ImportError_.filename == path)).rowcount  # type: ignore[attr-defined]
    )


def forget_file(engine: Engine, path: str) -> bool:
    """A file that is gone (or no longer a DAG file): deactivate its DAGs, drop its error."""
    with session_scope(engine) as session:
        changed = _deactivate(session, DagModel.fileloc == path)
        return _clear_import_error(session, path) or changed


def deactivate_missing(engine: Engine, present: set[str]) -> bool:
    """After a full pass: forget every file that is not among ``present``."""
    with session_scope(engine) as session:
        changed = False
        for dag in session.scalars(select(DagModel).where(DagModel.is_active.is_(True))):
            if dag.fileloc not in present:
                dag.is_active = False
                changed = True
        for row in session.scalars(select(ImportError_)):
            if row.filename not in present:
                session.delete(row)
                changed = True
        return changed
