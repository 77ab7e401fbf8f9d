"""Fernet encryption of variable values and connection secrets.

``[core] fernet_key`` holds one or more comma-separated Fernet keys: the first
encrypts, every one decrypts (``MultiFernet``), so a key is rotated by putting the
new key first, running ``ketch rotate-fernet-key``, then dropping the old key.

When no key is configured, a key is generated once into ``$KETCH_HOME/fernet_key``
(mode 0600, created atomically so two processes starting together agree on one key)
and used from then on: values are never stored in clear. A deployment whose
scheduler and web run on different machines must configure the key explicitly
(environment or a mounted Secret); the generated file is for one machine.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ketch.config import Settings, ketch_home

log = logging.getLogger(__name__)

KEY_FILE_NAME = "fernet_key"


class FernetKeyError(Exception):
    """The configured key is not a valid Fernet key, or a value cannot be decrypted."""


def key_file() -> Path:
    return ketch_home() / KEY_FILE_NAME


def _generated_key() -> str:
    """The key in ``$KETCH_HOME/fernet_key``, created (0600, atomically) when missing."""
    path = key_file()
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # often creates $KETCH_HOME
    fd, tmp = tempfile.mkstemp(prefix=".fernet_key.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, Fernet.generate_key() + b"\n")
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created the key first
            log.warning(
                "no [core] fernet_key configured: generated one into %s; configure "
                "KETCH__CORE__FERNET_KEY when scheduler and web run on different machines",
                path,
            )
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return path.read_text().strip()


def configured_keys(settings: Settings) -> list[str]:
    """The Fernet keys in order (first encrypts); the generated key when none is set."""
    raw = settings.core.fernet_key.get_secret_value() if settings.core.fernet_key else ""
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    return keys or [_generated_key()]


def get_fernet(settings: Settings) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode()) for k in configured_keys(settings)])
    except ValueError as exc:
        raise FernetKeyError(f"invalid [core] fernet_key: {exc}") from exc


def encrypt(fernet: MultiFernet, value: str) -> str:
    return fernet.encrypt(value.encode()).decode()


def decrypt(fernet: MultiFernet, token: str) -> str:
    try:
        return fernet.decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise FernetKeyError(
            "cannot decrypt a stored value with the configured fernet keys "
            "(was [core] fernet_key changed without keeping the old key?)"
        ) from exc


def rotate(fernet: MultiFernet, token: str) -> str:
    """Re-encrypt a token with the first key (it must decrypt with one of the keys)."""
    try:
        return fernet.rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise FernetKeyError("cannot decrypt a stored value with the configured keys") from exc
