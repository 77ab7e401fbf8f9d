"""What the web server may expose, decided once at start from its bind address.

Zero configuration stays zero configuration on one machine: with no identity
provider, a server bound to a loopback address lets loopback requests in as admin.
Bound to any other address it would let the network in, so it refuses to start
unless an identity provider is configured or ``[auth] mode = "none"`` says so.
"""

from __future__ import annotations

import ipaddress
import logging

from ketch.config import Settings

log = logging.getLogger("ketch.auth")

LOOPBACK_HOSTNAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class UnsafeExposure(Exception):
    """The server would serve the network without authentication."""


def is_loopback_host(host: str) -> bool:
    """A bind address or ``Host`` name that only this machine can reach."""
    host = host.strip().lower()
    if host in LOOPBACK_HOSTNAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str) -> None:
    """Log how requests are authenticated, or raise :class:`UnsafeExposure` (one line).

    Called by every command that starts the web server, before it binds.
    """
    from ketch.auth.oidc.errors import OidcConfigError
    from ketch.auth.oidc.settings import check_settings

    auth = settings.auth
    try:
        check_settings(auth)
    except OidcConfigError as exc:
        raise UnsafeExposure(str(exc)) from None
    if auth.mode == "none":
        log.warning(
            "AUTHENTICATION IS OFF ([auth] mode = none): anyone who can reach %s may "
            "trigger, clear and mark runs, read every log and change variables",
            host,
        )
        return
    if auth.oidc_configured:
        log.info("sign-in required on every route (OpenID Connect issuer %s)", auth.oidc_issuer)
        return
    if is_loopback_host(host):
        log.warning(
            "no identity provider configured: requests from this machine are let in as admin "
            "(set [auth] oidc_client_id and oidc_client_secret to require sign-in)"
        )
        return
    raise UnsafeExposure(
        f"refusing to serve {host} without sign-in: set KETCH__AUTH__OIDC_CLIENT_ID and "
        "KETCH__AUTH__OIDC_CLIENT_SECRET (and KETCH__AUTH__ALLOWED_DOMAINS), bind 127.0.0.1, "
        "or set KETCH__AUTH__MODE=none to serve without authentication"
    )
