"""The values a task try must never show in clear in its log.

Every value a task reads from a sensitive variable, every connection password (and
extra fields with a secret-looking name) is added here. Masking of log output uses
:func:`sensitive_values` (it comes with the log work); the registry is per process,
so each try starts empty. Stdlib only: a task try imports it.

A variable is sensitive when it is flagged so, or when its key contains one of
Airflow's sensitive words (``password``, ``secret``, ``token``, ``api_key``...).
"""

from __future__ import annotations

import threading

# Airflow's default sensitive field names ([core] sensitive_var_conn_names adds to them).
SENSITIVE_WORDS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "authorization",
        "passphrase",
        "passwd",
        "password",
        "private_key",
        "secret",
        "token",
        "keyfile_dict",
        "service_account",
    }
)

# Values shorter than this are not masked (masking "a" would garble every line).
MIN_LENGTH = 3

_lock = threading.Lock()
_values: set[str] = set()


def looks_sensitive(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SENSITIVE_WORDS)


def mask_secret(value: str) -> None:
    """Remember ``value`` (and each of its lines) as never to be logged in clear."""
    if not isinstance(value, str):
        return
    with _lock:
        for part in {value, *value.splitlines()}:
            if len(part.strip()) >= MIN_LENGTH:
                _values.add(part)


def sensitive_values() -> frozenset[str]:
    with _lock:
        return frozenset(_values)


def redact(text: str, replacement: str = "***") -> str:
    """``text`` with every registered value replaced (longest first)."""
    values = sensitive_values()
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, replacement)
    return text


def clear() -> None:
    with _lock:
        _values.clear()
