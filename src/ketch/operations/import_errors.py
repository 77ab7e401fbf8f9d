"""Import errors: DAG files that failed to parse, by file name."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ketch.db.models import ImportError_
from ketch.operations._common import Page


def list_import_errors(
    session: Session, *, limit: int | None = None, offset: int = 0
) -> Page[ImportError_]:
    total = session.scalar(select(func.count()).select_from(ImportError_)) or 0
    query = select(ImportError_).order_by(ImportError_.filename).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return Page(list(session.scalars(query)), total)
