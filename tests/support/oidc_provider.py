"""A real OpenID Connect provider for tests: npm ``oidc-provider`` 9 on a loopback port.

It stands in for Google: discovery, authorization code flow with PKCE (S256) required,
RS256 ID tokens signed by a key published at its JWKS URI, and Google-like claims
(``email``, ``email_verified``, ``hd``, ``name``) per account. Its dev login page takes
any password; the login name is the account. Test-only controls rotate the signing key,
shift the provider's clock (so the ID tokens it issues are already expired) and replace
accounts or registered clients without a restart.

    with start_oidc_provider(ACCOUNTS) as provider:
        provider.set_clients([OidcClient("ketch", "secret", ["http://localhost:8080/oauth2callback"])])
        ...

``sign_in_with_httpx`` walks the dev login and consent pages with an httpx client (the
same requests a browser sends), for tests that do not need a browser.

The node script and its locked dependencies live in ``tests/support/oidc/``; ``make
install`` runs ``npm ci`` there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

OIDC_DIR = Path(__file__).parent / "oidc"
SCRIPT = OIDC_DIR / "provider.mjs"
# The dev interactions' pages import a web font; browser tests block this host.
FONT_HOSTS = ("fonts.googleapis.com", "fonts.gstatic.com")


class ProviderUnavailable(RuntimeError):
    """node or the provider's npm packages are missing."""


def google_claims(
    email: str,
    *,
    hd: str | None = None,
    email_verified: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """The claims Google puts in an ID token for ``email`` (``hd`` only for Workspace)."""
    claims: dict[str, Any] = {
        "email": email,
        "email_verified": email_verified,
        "name": name or email.split("@")[0].title(),
    }
    if hd is not None:
        claims["hd"] = hd
    return claims


@dataclass(frozen=True)
class OidcClient:
    """A confidential client registered at the provider (PKCE is required of all)."""

    client_id: str
    client_secret: str
    redirect_uris: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
        }


class OidcProvider:
    """A running provider process and its test controls."""

    def __init__(self, process: subprocess.Popen[str], issuer: str, workdir: Path) -> None:
        self.process = process
        self.issuer = issuer
        self._workdir = workdir
        self._control = httpx.Client(base_url=issuer, timeout=10)

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self._control.request(method, f"/__test/{path}", json=body)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    @property
    def kid(self) -> str:
        """The id of the key that signs ID tokens now."""
        return str(self._call("GET", "state")["kid"])

    def rotate_signing_key(self) -> str:
        """Sign with a brand-new key from now on (the old one leaves the JWKS); its kid."""
        return str(self._call("POST", "rotate-key")["kid"])

    def set_clock_offset(self, seconds: float) -> None:
        """Shift the provider's clock: -7200 makes its 1-hour ID tokens expired on arrival."""
        self._call("PUT", "clock", {"offset_seconds": seconds})

    def set_accounts(self, accounts: Mapping[str, Mapping[str, Any]]) -> None:
        self._call("PUT", "accounts", {k: dict(v) for k, v in accounts.items()})

    def set_clients(self, clients: list[OidcClient]) -> None:
        self._call("PUT", "clients", [c.as_json() for c in clients])

    def stop(self) -> None:
        self._control.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self._workdir, ignore_errors=True)


def _check_installed() -> str:
    node = shutil.which("node")
    if node is None:
        raise ProviderUnavailable("node is not installed (Debian's nodejs package)")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        raise ProviderUnavailable(
            f"oidc-provider is not installed: run `npm ci` in {OIDC_DIR} (make install does)"
        )
    return node


def start_oidc_provider(
    accounts: Mapping[str, Mapping[str, Any]],
    clients: list[OidcClient] | None = None,
    *,
    id_token_ttl: int = 3600,
    startup_timeout: float = 20.0,
) -> OidcProvider:
    """Start the provider on a free loopback port; ``stop()`` it (or use :func:`oidc_provider`)."""
    node = _check_installed()
    workdir = Path(tempfile.mkdtemp(prefix="ketch-oidc-"))
    config = {
        "host": "127.0.0.1",
        "port": 0,
        "accounts": {k: dict(v) for k, v in accounts.items()},
        "clients": [c.as_json() for c in clients or []],
        "id_token_ttl": id_token_ttl,
    }
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config))
    log = (workdir / "provider.log").open("w")
    process = subprocess.Popen(
        [node, str(SCRIPT), str(config_path)],
        cwd=OIDC_DIR,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    log.close()
    first_line: list[str] = []
    reader = threading.Thread(
        target=lambda: first_line.append(process.stdout.readline() if process.stdout else ""),
        daemon=True,
    )
    reader.start()
    reader.join(startup_timeout)
    if not first_line or not first_line[0].strip():
        process.kill()
        process.wait()
        stderr = (workdir / "provider.log").read_text()
        shutil.rmtree(workdir, ignore_errors=True)
        raise ProviderUnavailable(f"the OpenID Connect provider did not start:\n{stderr}")
    issuer = json.loads(first_line[0])["issuer"]
    return OidcProvider(process, issuer, workdir)


@contextmanager
def oidc_provider(
    accounts: Mapping[str, Mapping[str, Any]],
    clients: list[OidcClient] | None = None,
    **kwargs: Any,
) -> Iterator[OidcProvider]:
    provider = start_oidc_provider(accounts, clients, **kwargs)
    try:
        yield provider
    finally:
        provider.stop()


class _FirstForm(HTMLParser):
    """The first form of a page: its action and the values of its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action = attributes.get("action", "")
        elif tag == "input" and self.action is not None and not self._done and "name" in attributes:
            self.fields[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self.action is not None:
            self._done = True


def _first_form(page: httpx.Response) -> tuple[str, dict[str, str]]:
    parser = _FirstForm()
    parser.feed(page.text)
    assert parser.action is not None, (
        f"no form on the provider's page {page.url}:\n{page.text[:2000]}"
    )
    return urljoin(str(page.url), parser.action), parser.fields


def sign_in_with_httpx(
    client: httpx.Client, authorization_url: str, login: str, *, max_hops: int = 20
) -> httpx.Response:
    """Walk the provider's dev login and consent pages for ``login``.

    Starts at ``authorization_url`` (the provider's /auth?… the app redirected to) and
    follows redirects until one leads off the provider; returns that redirect (to the
    app's callback), not followed, so a test can inspect or replay it.
    """
    issuer_origin = httpx.URL(authorization_url).copy_with(path="/", query=None)
    response = client.get(authorization_url)
    for _ in range(max_hops):
        if response.is_redirect:
            target = httpx.URL(urljoin(str(response.url), response.headers["location"]))
            if (target.host, target.port) != (issuer_origin.host, issuer_origin.port):
                return response
            response = client.get(target)
            continue
        assert response.status_code == 200, (
            f"provider answered {response.status_code}: {response.text[:2000]}"
        )
        action, fields = _first_form(response)
        if "login" in fields:  # the login page; any password will do
            fields.update(login=login, password="x")
        # else the consent page, or the page that ends the previous account's session
        # (a form that a browser submits by script): send its hidden fields as they are
        response = client.post(action, data=fields)
    raise AssertionError(f"the provider did not redirect back within {max_hops} steps")
