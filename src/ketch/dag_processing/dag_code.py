"""A DAG file's source in the database (``dag_code``), for web servers without the folder.

The DAG processor calls :func:`store_source` in the transaction that stores the file's
DAGs, so the source and the DAGs are never out of step after a crash. The file's bytes
are hashed on every parse (they are in the page cache: the child just imported them) and
compared with the stored hash by primary key: a parse that changes nothing writes
nothing. The file is read by the processor after the child parsed it; if it changed in
between, the watcher parses it again and the next store catches up.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ketch.db.models import DagCode

MAX_SOURCE_BYTES = 1024 * 1024
"""A larger file stores a note instead of its text (a web page of megabytes helps no one)."""


def source_of(path: Path) -> tuple[str, str] | None:
    """The text to store for ``path`` and the sha256 of its bytes; None if unreadable."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) > MAX_SOURCE_BYTES:
        note = (
            f"# The source of {path} is not stored: the file has {len(data):,} bytes, "
            f"more than the {MAX_SOURCE_BYTES:,}-byte limit.\n"
        )
        return note, digest
    return data.decode("utf-8", errors="replace"), digest


def store_source(session: Session, path: Path) -> bool:
    """Store the source of ``path`` if its hash changed; True if a row was written."""
    found = source_of(path)
    if found is None:
        return False
    text, digest = found
    fileloc = str(path)
    stored = session.scalar(select(DagCode.source_code_hash).where(DagCode.fileloc == fileloc))
    if stored == digest:
        return False
    row = DagCode(
        fileloc=fileloc, source_code=text, source_code_hash=digest, last_updated=datetime.now(UTC)
    )
    session.merge(row)
    return True
