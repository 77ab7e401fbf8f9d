"""The ways OIDC sign-in fails before any account is looked at: settings that cannot
work, and an identity provider that is unusable or cannot be reached (its transport
errors are those of the HTTP client Authlib uses)."""

from __future__ import annotations

import httpx


def _http_errors() -> tuple[type[Exception], ...]:
    """Transport errors of the HTTP client Authlib uses: httpx2 when installed, else httpx."""
    errors: list[type[Exception]] = [httpx.HTTPError]
    try:
        import httpx2
    except ImportError:
        pass
    else:
        errors.append(httpx2.HTTPError)
    return tuple(errors)


HTTP_ERRORS = _http_errors()


class OidcConfigError(ValueError):
    """The identity provider settings cannot work (one line that says how to fix them)."""


class ProviderError(RuntimeError):
    """The identity provider's discovery document is unusable."""


UNREACHABLE: tuple[type[Exception], ...] = (*HTTP_ERRORS, ValueError, ProviderError)
