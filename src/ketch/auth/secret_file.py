"""Secrets generated once into ``$KETCH_HOME`` so processes on one machine agree.

The try-token key and the session key have the same zero-configuration default:
when the setting is unset, the first process that needs the key creates it, every
later process (scheduler, web, CLI) reads the same file. Replicas that do not share
a disk must set the key explicitly.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

# Read once per path: keys are checked on every request and must not read a file each time.
_cache: dict[Path, str] = {}


def read_or_create_secret(path: Path) -> str:
    """The secret stored at ``path``, created (0600) on first use.

    The secret is written to a private temp file and hard-linked into place:
    ``link`` fails if another process won the race, and then we read theirs, so
    every process on the machine ends up with the same secret, never a torn one.
    """
    cached = _cache.get(path)
    if cached is not None:
        return cached
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    value = _cache[path] = path.read_text().strip()
    return value
