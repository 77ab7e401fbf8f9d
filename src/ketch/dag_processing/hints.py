"""What to add to "DAG 'x' not found" when DAG files failed to import.

A new user's DAG is most often missing because its file did not import: the message
says how many files failed and where to read why, and names the file when one
plausibly defines the DAG (its stem is the dag_id, or the dag_id occurs in it as a
word).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ketch.db.models import ImportError_

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# The same words from the CLI on the database and through the REST API (whose 404 detail
# the remote CLI prints), so both print the same.
SEE = "ketch dags errors (or GET /api/v1/importErrors)"
MAX_READ = 1 << 20  # a DAG file bigger than this is not searched for the dag_id
MAX_NAMED = 3


def import_error_hint(
    session: Session,
    dag_id: str,
    *,
    see: str = SEE,
    dags_folder: str | Path | None = None,
) -> str:
    """``""`` without import errors, else ``"; ..."`` to append to the not-found message."""
    rows = list(session.scalars(select(ImportError_).order_by(ImportError_.filename)))
    if not rows:
        return ""
    suspects = [row for row in rows if _may_define(row.filename, dag_id)]
    if not suspects:
        files = "1 DAG file" if len(rows) == 1 else f"{len(rows)} DAG files"
        return f"; {files} failed to import: see {see}"
    named = [
        f"{_shown(row.filename, dags_folder)} ({_last_line(row.stacktrace)})"
        for row in suspects[:MAX_NAMED]
    ]
    more = len(suspects) - len(named)
    if more:
        named.append(f"{more} more")
    if len(suspects) == 1:
        return f"; DAG file {named[0]} failed to import and may define it: see {see}"
    return f"; DAG files {', '.join(named)} failed to import and may define it: see {see}"


def import_error_hint_for_app(state: Any, dag_id: str) -> str:
    """The hint in the REST API's 404, on the app's own sessions; ``""`` on any trouble
    (a hint must never turn a 404 into a 500)."""
    try:
        factory = getattr(state, "session_factory", None)
        if factory is None:
            from ketch.db.engine import get_engine, session_factory

            factory = session_factory(get_engine())
        settings = getattr(state, "settings", None)
        folder = settings.core.dags_folder if settings is not None else None
        with factory() as session:
            return import_error_hint(session, dag_id, dags_folder=folder)
    except Exception:
        log.debug("could not look up import errors for a 404", exc_info=True)
        return ""


def _may_define(filename: str, dag_id: str) -> bool:
    path = Path(filename)
    if path.stem == dag_id:
        return True
    try:
        if path.stat().st_size > MAX_READ:
            return False
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return re.search(rf"(?<![\w]){re.escape(dag_id)}(?![\w])", text) is not None


def _shown(filename: str, dags_folder: str | Path | None) -> str:
    if dags_folder:
        try:
            return Path(filename).relative_to(Path(dags_folder).expanduser().resolve()).as_posix()
        except ValueError:
            pass
    return filename


def _last_line(stacktrace: str, limit: int = 160) -> str:
    """The error itself: the traceback's last line (``ValueError: oops``)."""
    lines = [line.strip() for line in stacktrace.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "error"
    return last if len(last) <= limit else last[: limit - 3] + "..."
