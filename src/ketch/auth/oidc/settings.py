"""``[auth]`` settings for sign-in that cannot be served safely, refused when the app is
built (and by ``ketch web``'s exposure check): an issuer that is not an https:// URL (or
http:// on this machine), a callback path that is not a path or collides with a route,
trusted proxies that are not addresses."""

from __future__ import annotations

from urllib.parse import urlsplit

from ketch.auth.exposure import is_loopback_host
from ketch.auth.oidc.errors import OidcConfigError
from ketch.auth.oidc.paths import LOGIN_PATH, LOGOUT_PATH
from ketch.auth.oidc.proxies import trusted_networks
from ketch.config import AuthSettings


def check_settings(auth: AuthSettings) -> None:
    """Refuse settings that cannot be served safely; called when the app is built."""
    issuer = urlsplit(auth.oidc_issuer)
    if issuer.scheme not in ("https", "http") or not issuer.hostname:
        raise OidcConfigError(
            f"[auth] oidc_issuer must be an https:// URL, not {auth.oidc_issuer!r}"
        )
    if issuer.query or issuer.fragment:
        raise OidcConfigError(
            f"[auth] oidc_issuer must not have a query or fragment: {auth.oidc_issuer!r}"
        )
    if issuer.scheme == "http" and not is_loopback_host(issuer.hostname):
        raise OidcConfigError(
            f"[auth] oidc_issuer {auth.oidc_issuer} is http:// on a host that is not this "
            "machine: tokens and the client secret would cross the network in clear "
            "(use https://; http:// is accepted only for a loopback issuer)"
        )
    path = auth.oidc_callback_path
    if not path.startswith("/") or path.startswith("//") or path in (LOGIN_PATH, LOGOUT_PATH):
        raise OidcConfigError(
            f"[auth] oidc_callback_path must be a path such as /oauth2callback, not {path!r}"
        )
    trusted_networks(auth.trusted_proxies)
