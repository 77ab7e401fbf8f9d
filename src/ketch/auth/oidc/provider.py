"""The identity provider as one app knows it: the Authlib client built from the
settings (discovery URL, scopes, PKCE), the discovery document whose issuer must be the
configured one (its JWKS is Authlib's to fetch and refresh), and the claims an ID token
must carry. :class:`OidcRuntime` is what the sign-in routes read it all from."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import authlib.deprecate
from fastapi import Request

from ketch.auth.oidc.errors import ProviderError
from ketch.auth.oidc.proxies import Network, trusted_networks
from ketch.auth.oidc.settings import check_settings
from ketch.config import AuthSettings, Settings, get_settings

with warnings.catch_warnings():
    # Authlib 1.9 announces at import that its httpx client will move to "httpx2". It
    # works with httpx as installed; unfiltered, the notice would open every server log.
    warnings.filterwarnings("ignore", category=authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App

SCOPES = "openid email profile"
LEEWAY_SECONDS = 60
"""Clock skew allowed between this server and the provider for ``exp`` and ``iat``."""
GOOGLE_ISSUER = "https://accounts.google.com"


def discovery_url(issuer: str) -> str:
    return f"{issuer.rstrip('/')}/.well-known/openid-configuration"


@dataclass(slots=True)
class OidcRuntime:
    """What the routes need, built once per app from its settings."""

    auth: AuthSettings
    client: StarletteOAuth2App | None
    trusted: tuple[Network, ...]
    base_url: str | None = None  # [api] base_url: the external URL, when configured
    discovery_checked: bool = False


def build_runtime(settings: Settings) -> OidcRuntime:
    auth = settings.auth
    check_settings(auth)
    client: StarletteOAuth2App | None = None
    if auth.oidc_configured and auth.oidc_client_secret is not None:
        client = OAuth().register(
            name="oidc",
            client_id=auth.oidc_client_id,
            client_secret=auth.oidc_client_secret.get_secret_value(),
            server_metadata_url=discovery_url(auth.oidc_issuer),
            client_kwargs={"scope": SCOPES, "code_challenge_method": "S256", "timeout": 10.0},
        )
    return OidcRuntime(
        auth=auth,
        client=client,
        trusted=trusted_networks(auth.trusted_proxies),
        base_url=settings.api.base_url.rstrip("/") if settings.api.base_url else None,
    )


def runtime_of(request: Request) -> OidcRuntime:
    """The runtime of the request's app (built from its settings on first use when the
    app included the sign-in routes without ``install``)."""
    runtime: OidcRuntime | None = getattr(request.app.state, "oidc", None)
    if runtime is None:  # an app that included the router without install()
        settings: Settings | None = getattr(request.app.state, "settings", None)
        runtime = request.app.state.oidc = build_runtime(settings or get_settings())
    return runtime


async def provider_metadata(runtime: OidcRuntime) -> dict[str, Any]:
    """The provider's discovery document; its issuer must be the configured one."""
    assert runtime.client is not None
    metadata: dict[str, Any] = await runtime.client.load_server_metadata()
    if not runtime.discovery_checked:
        found = str(metadata.get("issuer", ""))
        if found.rstrip("/") != runtime.auth.oidc_issuer.rstrip("/"):
            runtime.client.server_metadata.pop("_loaded_at", None)  # fetch again next time
            raise ProviderError(
                f"discovery at {discovery_url(runtime.auth.oidc_issuer)} names issuer "
                f"{found!r}, not the configured {runtime.auth.oidc_issuer!r}"
            )
        runtime.discovery_checked = True
    return metadata


def _issuer_values(issuer: str) -> list[str]:
    values = [issuer]
    if issuer.rstrip("/") == GOOGLE_ISSUER:
        values.append("accounts.google.com")  # Google documents both forms of its iss
    return values


def claims_options(runtime: OidcRuntime, issuer: str) -> dict[str, dict[str, Any]]:
    """Fresh each time (Authlib pops keys from it)."""
    return {
        "iss": {"essential": True, "values": _issuer_values(issuer)},
        "aud": {"essential": True, "value": runtime.auth.oidc_client_id},
        "sub": {"essential": True},
        "exp": {"essential": True},
        "iat": {"essential": True},
    }
