"""The values a task try must never show in clear in its log.

Every value a task reads from a sensitive variable, every connection password (and
extra fields with a secret-looking name) is added here. The registry is per process,
so each try starts empty. Stdlib only: a task try imports it.

Masking covers the forms a value takes when code prints it through the usual
encoders (:func:`encodings`): as is, URL-quoted, JSON-escaped, and each of its lines.
:func:`redact` masks text in this process; the log pump masks the try's output bytes
with :class:`ketch.logs.masking.StreamMasker`, fed by a listener
(:func:`add_listener`) that forwards each new value to it before ``mask_secret``
returns.

A variable is sensitive when it is flagged so, or when its key contains one of
Airflow's sensitive words (``password``, ``secret``, ``token``, ``api_key``...).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from urllib.parse import quote, quote_plus

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
_values: set[str] = set()  # what sensitive_values() returns: each value and its lines
_registered: dict[str, None] = {}  # each value given to mask_secret, in order
_patterns: set[str] = set()  # every encoding of every value: what redact() masks
_regex: re.Pattern[str] | None = None  # _patterns, longest first; None: to rebuild
_listeners: list[Callable[[str], None]] = []


def looks_sensitive(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SENSITIVE_WORDS)


def _long_enough(text: str) -> bool:
    return len(text.strip()) >= MIN_LENGTH


def _parts(value: str) -> set[str]:
    """``value`` and each of its lines (stripped), those long enough to mask."""
    return {
        part
        for part in (value, *(line.strip() for line in value.splitlines()))
        if _long_enough(part)
    }


def encodings(value: str) -> set[str]:
    """Every form of ``value`` to mask: the value and each of its lines, each as is,
    URL-quoted (``quote(safe="")`` and ``quote_plus``) and JSON-escaped (ASCII and
    not), without forms shorter than :data:`MIN_LENGTH` (after strip)."""
    forms: set[str] = set()
    for part in _parts(value):
        forms.update(
            (
                part,
                quote(part, safe=""),
                quote_plus(part),
                json.dumps(part)[1:-1],
                json.dumps(part, ensure_ascii=False)[1:-1],
            )
        )
    return {form for form in forms if _long_enough(form)}


def secret_strings(value: object, *, all_leaves: bool = False) -> Iterator[str]:
    """The strings of a JSON value to mask: every string leaf (``all_leaves``), else
    those under a key that looks sensitive, at any depth of dicts and lists. A string
    to mask that holds JSON (a service account's key file) gives its strings too."""
    if isinstance(value, str):
        if all_leaves:
            yield value
            if value.lstrip()[:1] in ("{", "[", '"'):
                try:
                    parsed = json.loads(value)
                except ValueError:
                    return
                yield from secret_strings(parsed, all_leaves=True)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from secret_strings(
                item, all_leaves=all_leaves or (isinstance(key, str) and looks_sensitive(key))
            )
    elif isinstance(value, list):
        for item in value:
            yield from secret_strings(item, all_leaves=all_leaves)


def mask_secret(value: str) -> None:
    """Remember ``value`` (and each of its lines) as never to be logged in clear.

    A value seen for the first time is passed to every listener before this returns;
    a listener's exception propagates (the caller must not go on to log the value).
    """
    global _regex
    if not isinstance(value, str) or not _parts(value):
        return
    with _lock:
        if value in _registered:
            return
        _registered[value] = None
        _values.update(_parts(value))
        _patterns.update(encodings(value))
        _regex = None
        listeners = list(_listeners)
    for listener in listeners:
        listener(value)


def add_listener(listener: Callable[[str], None]) -> None:
    """Call ``listener(value)`` for every value registered from now on, and at once for
    each value already registered (so a listener added late misses none)."""
    with _lock:
        _listeners.append(listener)
        already = list(_registered)
    for value in already:
        listener(value)


def remove_listener(listener: Callable[[str], None]) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def sensitive_values() -> frozenset[str]:
    with _lock:
        return frozenset(_values)


def redact(text: str, replacement: str = "***") -> str:
    """``text`` with every encoding of every registered value replaced (longest first)."""
    global _regex
    with _lock:
        if not _patterns:
            return text
        if _regex is None:
            ordered = sorted(_patterns, key=lambda p: (-len(p), p))
            _regex = re.compile("|".join(re.escape(p) for p in ordered))
        regex = _regex
    return regex.sub(lambda _match: replacement, text)


def clear() -> None:
    """Forget every registered value (listeners stay)."""
    global _regex
    with _lock:
        _values.clear()
        _registered.clear()
        _patterns.clear()
        _regex = None
