"""The sign-in routes' paths, and where sign-in may send the browser afterwards: a path
on this site that is not one of those routes (no open redirect, no loop)."""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_CALLBACK_PATH = "/oauth2callback"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"


def safe_next(value: str | None, callback_path: str = DEFAULT_CALLBACK_PATH) -> str:
    """``value`` when it is a path on this site, else ``/`` (no open redirect)."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    if parts.path in (LOGIN_PATH, LOGOUT_PATH, callback_path):
        return "/"
    return value
