"""Behind a reverse proxy: ``[auth] trusted_proxies`` as networks, and what a request
from one of them may say about the browser (``X-Forwarded-Proto``/``-Host``: the URL the
provider redirects back to) and the caller (``X-Forwarded-For``: the audit log's address).
Forwarded headers from any other peer are ignored."""

from __future__ import annotations

import ipaddress
import re

from fastapi import Request

from ketch.auth.oidc.errors import OidcConfigError

_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(entries: list[str]) -> tuple[Network, ...]:
    """``[auth] trusted_proxies`` as networks (a bare address is a /32 or /128)."""
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise OidcConfigError(
                f"[auth] trusted_proxies: {entry!r} is not an IP address or CIDR range"
            ) from exc
    return tuple(networks)


def _peer_trusted(request: Request, trusted: tuple[Network, ...]) -> bool:
    if not trusted or request.client is None:
        return False
    try:
        peer = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in network for network in trusted)


def _last_value(header: str | None) -> str | None:
    """The value the nearest proxy (the trusted one) set: the last of a list."""
    if not header:
        return None
    value = header.rsplit(",", 1)[-1].strip()
    return value or None


def external_base_url(request: Request, trusted: tuple[Network, ...]) -> str:
    """``scheme://host`` as the browser sees it; forwarded headers only from a trusted proxy."""
    scheme = request.url.scheme
    host = request.headers.get("host") or request.url.netloc
    if _peer_trusted(request, trusted):
        proto = (_last_value(request.headers.get("x-forwarded-proto")) or "").lower()
        if proto in ("http", "https"):
            scheme = proto
        forwarded_host = _last_value(request.headers.get("x-forwarded-host"))
        if forwarded_host and _HOST.fullmatch(forwarded_host):
            host = forwarded_host
    return f"{scheme}://{host}"


def client_ip(request: Request, trusted: tuple[Network, ...]) -> str | None:
    """The caller's address: the peer, or what a trusted proxy says in X-Forwarded-For."""
    if request.client is None:
        return None
    if _peer_trusted(request, trusted):
        forwarded = _last_value(request.headers.get("x-forwarded-for"))
        if forwarded:
            return forwarded[:64]
    return request.client.host
