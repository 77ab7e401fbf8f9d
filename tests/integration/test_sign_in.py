"""Google-style sign-in against a real OpenID Connect provider (npm oidc-provider).

The app under test is ``create_app(settings)`` served by uvicorn on a loopback port and
reached as ``http://localhost:PORT`` while the provider is ``http://127.0.0.1:PORT``: two
sites, as Google and a company's ketch are, so the session cookie's SameSite=Lax is
really exercised by the provider's redirect back. One sign-in runs in headless
Chromium; the refusals and attacks are driven with httpx through the same pages.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.config import Settings, get_settings
from ketch.db.models import AuditLog
from tests.support.oidc_provider import (
    FONT_HOSTS,
    OidcClient,
    OidcProvider,
    google_claims,
    oidc_provider,
    sign_in_with_httpx,
)
from tests.support.postgres import free_port

CLIENT_ID = "ketch-web"
CLIENT_SECRET = "ketch-web-secret-for-tests"

ACCOUNTS = {
    "alice@corp.com": google_claims("alice@corp.com", hd="corp.com", name="Alice Admin"),
    "frank@corp.com": google_claims("frank@corp.com", hd="corp.com"),
    "bob@other.com": google_claims("bob@other.com", hd="other.com"),
    "eve@corp.com": google_claims("eve@corp.com"),  # corp.com address, no hd: not Workspace
    "mallory@evil.com": google_claims("mallory@evil.com", hd="corp.com"),
    "dan@corp.com": google_claims("dan@corp.com", hd="corp.com", email_verified=False),
    "carol@gmail.com": google_claims("carol@gmail.com"),  # a contractor, admitted by email
}

ROLE_RULES = [
    {"email": "alice@corp.com", "role": "admin"},
    {"email": "carol@gmail.com", "role": "op"},
    {"domain": "corp.com", "role": "viewer"},
]


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider(ACCOUNTS) as running:
        yield running


@dataclass
class WebApp:
    url: str
    app: FastAPI
    settings: Settings
    engine: Engine

    def audit(self) -> list[tuple[str, str, str | None]]:
        with Session(self.engine) as session:
            rows = session.scalars(select(AuditLog).order_by(AuditLog.id))
            return [(r.actor, r.action, r.detail) for r in rows]


def build_app(settings: Settings) -> FastAPI:
    """The app exactly as ``ketch web`` builds it."""
    from ketch.api.app import create_app

    return create_app(settings)


@contextmanager
def serve(app: FastAPI, port: int) -> Iterator[None]:
    """uvicorn in a thread; it believes no proxy header itself (ketch decides that)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def configure_auth(monkeypatch: pytest.MonkeyPatch, issuer: str, **extra: str) -> Settings:
    env = {
        "OIDC_ISSUER": issuer,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "ALLOWED_DOMAINS": json.dumps(["corp.com"]),
        "ROLE_RULES": json.dumps(ROLE_RULES),
        **extra,
    }
    for key, value in env.items():
        monkeypatch.setenv(f"KETCH__AUTH__{key}", value)
    get_settings.cache_clear()
    return get_settings()


@contextmanager
def running_web(
    provider: OidcProvider, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WebApp]:
    port = free_port()
    url = f"http://localhost:{port}"
    settings = configure_auth(monkeypatch, provider.issuer)
    provider.set_clients([OidcClient(CLIENT_ID, CLIENT_SECRET, [f"{url}/oauth2callback"])])
    app = build_app(settings)
    with serve(app, port):
        yield WebApp(url, app, settings, engine)


@pytest.fixture
def web(
    provider: OidcProvider, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WebApp]:
    """The app on SQLite and on PostgreSQL."""
    with running_web(provider, engine, monkeypatch) as running:
        yield running


@pytest.fixture
def web_sqlite(
    provider: OidcProvider, sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WebApp]:
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", str(sqlite_engine.url))
    with running_web(provider, sqlite_engine, monkeypatch) as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A browser stand-in: keeps cookies, follows nothing by itself."""
    with httpx.Client(timeout=15) as http:
        yield http


def begin(client: httpx.Client, web: WebApp, next_path: str = "/") -> str:
    """GET /login: the provider's authorization URL it redirects to."""
    response = client.get(f"{web.url}/login", params={"next": next_path})
    assert response.status_code == 302, response.text
    return response.headers["location"]


def to_callback(client: httpx.Client, web: WebApp, login: str, next_path: str = "/") -> str:
    """Sign in at the provider; the callback URL it sends the browser back to."""
    back = sign_in_with_httpx(client, begin(client, web, next_path), login)
    location = back.headers["location"]
    assert location.startswith(f"{web.url}/oauth2callback?"), location
    return location


def sign_in(client: httpx.Client, web: WebApp, login: str, next_path: str = "/") -> httpx.Response:
    return client.get(to_callback(client, web, login, next_path))


def home(client: httpx.Client, web: WebApp) -> httpx.Response:
    return client.get(f"{web.url}/")


def assert_anonymous(client: httpx.Client, web: WebApp) -> None:
    response = home(client, web)
    assert response.is_redirect, response.text
    assert response.headers["location"].startswith("/login?next=")


# ------------------------------------------------------------------------ browser


def test_browser_sign_in_and_out(web_sqlite: WebApp, provider: OidcProvider) -> None:
    from tests.support.browser import chromium, new_page, screenshot

    web = web_sqlite
    shots = []
    with chromium() as browser:
        page = new_page(browser, block_hosts=FONT_HOSTS)
        page.goto(f"{web.url}/")
        page.wait_for_url(f"{provider.issuer}/interaction/**")
        page.fill('input[name="login"]', "alice@corp.com")
        page.fill('input[name="password"]', "anything")
        shots.append(screenshot(page, "sign_in_1_provider_login"))
        page.get_by_role("button", name="Sign-in").click()
        page.get_by_role("button", name="Continue").click()  # the consent page
        page.wait_for_url(f"{web.url}/")
        shots.append(screenshot(page, "sign_in_2_home"))
        assert page.get_by_test_id("email").inner_text() == "alice@corp.com"
        assert page.get_by_test_id("role").inner_text() == "admin"

        cookies = {c["name"]: c for c in page.context.cookies(web.url)}
        session = cookies["ketch_session"]
        assert session["httpOnly"] is True
        assert session["sameSite"] == "Lax"
        assert session["secure"] is False  # served on loopback over http
        csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
        assert csrf

        # Keyboard only: tab to the sign-out button and press it.
        page.get_by_role("button", name="Sign out").focus()
        page.keyboard.press("Enter")
        page.wait_for_url(f"{web.url}/logout")
        shots.append(screenshot(page, "sign_in_3_signed_out"))
        assert "You are signed out" in page.inner_text("main")
        # Anonymous again: off to sign in (the provider's own session would then send
        # the browser straight back signed in, as Google does, so stop at the redirect).
        again = page.request.get(f"{web.url}/", max_redirects=0)
        assert again.status in (302, 303, 307)
        assert again.headers["location"].startswith("/login?next=")
    assert all(shot.stat().st_size > 0 for shot in shots)
    assert [(a, b) for a, b, _ in web.audit()][:2] == [
        ("alice@corp.com", "sign-in"),
        ("alice@corp.com", "sign-out"),
    ]


# --------------------------------------------------------------- who is admitted


@pytest.mark.parametrize(
    ("login", "role"),
    [
        ("alice@corp.com", "admin"),  # an exact-email rule
        ("frank@corp.com", "viewer"),  # the domain rule: hd and email both corp.com
        ("carol@gmail.com", "op"),  # a contractor's exact-email rule, no hd needed
    ],
)
def test_admitted(web: WebApp, client: httpx.Client, login: str, role: str) -> None:
    authorization_url = begin(client, web)
    query = parse_qs(urlsplit(authorization_url).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    assert query["scope"] == ["openid email profile"]
    assert query["nonce"] and query["state"]
    assert query["redirect_uri"] == [f"{web.url}/oauth2callback"]

    back = sign_in_with_httpx(client, authorization_url, login)
    response = client.get(back.headers["location"])
    assert response.status_code == 303 and response.headers["location"] == "/"
    page = home(client, web)
    assert page.status_code == 200
    assert f'data-testid="email">{login}<' in page.text
    assert f'data-testid="role">{role}<' in page.text
    assert '<meta name="csrf-token" content="' in page.text
    assert "sign-in" in [action for actor, action, _ in web.audit() if actor == login]


@pytest.mark.parametrize(
    ("login", "reason"),
    [
        ("bob@other.com", "Workspace domain other.com, which is not allowed"),
        ("mallory@evil.com", "domain evil.com is not allowed"),  # hd corp.com, email evil.com
        ("eve@corp.com", "no hd claim"),
        ("dan@corp.com", "is not verified"),
    ],
)
def test_refused(web: WebApp, client: httpx.Client, login: str, reason: str) -> None:
    response = sign_in(client, web, login)
    assert response.status_code == 403
    assert f'data-testid="email">{login}<' in response.text
    assert reason in response.text
    assert 'href="/login?switch=1"' in response.text  # another account; no redirect loop
    assert_anonymous(client, web)
    refused = [(a, d) for a, action, d in web.audit() if action == "sign-in refused"]
    assert refused and refused[0][0] == login and reason in (refused[0][1] or "")


def test_another_account_after_a_refusal(web_sqlite: WebApp, client: httpx.Client) -> None:
    """The 403 page's link asks the provider for a fresh login, not the refused session."""
    web = web_sqlite
    assert sign_in(client, web, "bob@other.com").status_code == 403
    switch = client.get(f"{web.url}/login?switch=1")
    assert switch.status_code == 302
    assert parse_qs(urlsplit(switch.headers["location"]).query)["prompt"] == ["login"]
    back = sign_in_with_httpx(client, switch.headers["location"], "alice@corp.com")
    assert client.get(back.headers["location"]).status_code == 303
    assert 'data-testid="email">alice@corp.com<' in home(client, web).text


def test_disabled_user_is_refused(web: WebApp, client: httpx.Client) -> None:
    from ketch.auth import users

    assert sign_in(client, web, "frank@corp.com").status_code == 303
    with Session(web.engine) as session:
        users.set_disabled(session, "frank@corp.com", True, by="alice@corp.com")
        session.commit()
    with httpx.Client(timeout=15) as other_browser:
        response = sign_in(other_browser, web, "frank@corp.com")
        assert response.status_code == 403
        assert "an administrator disabled this account" in response.text
        assert_anonymous(other_browser, web)


# ------------------------------------------------------------- the redirect back


@pytest.mark.parametrize(
    ("next_path", "landing"),
    [
        ("/api/v1/dags?limit=5", "/api/v1/dags?limit=5"),
        ("//evil.example/phish", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/login", "/"),
    ],
)
def test_next_is_a_local_path_only(
    web_sqlite: WebApp, client: httpx.Client, next_path: str, landing: str
) -> None:
    response = sign_in(client, web_sqlite, "frank@corp.com", next_path=next_path)
    assert response.status_code == 303
    assert response.headers["location"] == landing


def test_tampered_cookie_is_anonymous(web: WebApp, client: httpx.Client) -> None:
    assert sign_in(client, web, "alice@corp.com").status_code == 303
    assert home(client, web).status_code == 200
    value = client.cookies["ketch_session"]
    payload, _, signature = value.rpartition(".")
    forged = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    for cookie in (f"{payload}.{forged}", f"{payload[:-4]}AAAA.{signature}"):
        response = httpx.get(f"{web.url}/", headers={"Cookie": f"ketch_session={cookie}"})
        assert response.is_redirect and response.headers["location"].startswith("/login?")
    assert home(client, web).status_code == 200  # the genuine cookie still works


# ------------------------------------------------------------ protocol attacks


def test_replayed_state_is_refused(web: WebApp, client: httpx.Client) -> None:
    callback_url = to_callback(client, web, "alice@corp.com")
    assert client.get(callback_url).status_code == 303
    replay = client.get(callback_url)  # same browser, the state was used
    assert replay.status_code == 400
    assert "This sign-in link is not valid" in replay.text
    with httpx.Client(timeout=15) as attacker:  # another browser: the state is unknown
        stolen = attacker.get(callback_url)
        assert stolen.status_code == 400
        assert_anonymous(attacker, web)
    assert any(d == "unknown or replayed state" for _, _, d in web.audit())


def test_wrong_nonce_is_refused(web: WebApp, client: httpx.Client) -> None:
    authorization_url = httpx.URL(begin(client, web))
    tampered = authorization_url.copy_set_param("nonce", "not-the-nonce-ketch-sent")
    back = sign_in_with_httpx(client, str(tampered), "alice@corp.com")
    response = client.get(back.headers["location"])
    assert response.status_code == 403
    assert "failed verification" in response.text and "nonce" in response.text
    assert_anonymous(client, web)


def test_expired_id_token_is_refused(
    web: WebApp, client: httpx.Client, provider: OidcProvider
) -> None:
    provider.set_clock_offset(-2 * 3600)  # its 1-hour ID tokens expired an hour ago
    try:
        response = sign_in(client, web, "alice@corp.com")
    finally:
        provider.set_clock_offset(0)
    assert response.status_code == 403
    assert "ExpiredTokenError" in response.text
    assert_anonymous(client, web)


def test_signing_key_rotated_at_the_provider(
    web_sqlite: WebApp, client: httpx.Client, provider: OidcProvider
) -> None:
    web = web_sqlite
    old_kid = provider.kid
    assert sign_in(client, web, "alice@corp.com").status_code == 303
    cached = web.app.state.oidc.client.server_metadata["jwks"]
    assert [k["kid"] for k in cached["keys"]] == [old_kid]

    new_kid = provider.rotate_signing_key()
    assert new_kid != old_kid
    with httpx.Client(timeout=15) as other_browser:
        response = sign_in(other_browser, web, "frank@corp.com")
        assert response.status_code == 303, response.text
        assert home(other_browser, web).status_code == 200
    refreshed = web.app.state.oidc.client.server_metadata["jwks"]
    assert [k["kid"] for k in refreshed["keys"]] == [new_kid]


# ------------------------------------------------------------------- sign out


def test_sign_out_needs_the_csrf_token(web: WebApp, client: httpx.Client) -> None:
    assert sign_in(client, web, "alice@corp.com").status_code == 303
    page = home(client, web)
    csrf = page.text.split('<meta name="csrf-token" content="', 1)[1].split('"', 1)[0]

    refused = client.post(f"{web.url}/logout", data={"csrf_token": "wrong"})
    assert refused.status_code == 403
    refused = client.post(f"{web.url}/logout")
    assert refused.status_code == 403
    assert home(client, web).status_code == 200  # still signed in

    done = client.post(f"{web.url}/logout", data={"csrf_token": csrf})
    assert done.status_code == 303 and done.headers["location"] == "/logout"
    assert "You are signed out" in client.get(f"{web.url}/logout").text
    assert_anonymous(client, web)


def test_sign_out_with_the_csrf_header(web_sqlite: WebApp, client: httpx.Client) -> None:
    web = web_sqlite
    assert sign_in(client, web, "alice@corp.com").status_code == 303
    csrf = home(client, web).text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    done = client.post(f"{web.url}/logout", headers={"X-CSRF-Token": csrf})
    assert done.status_code == 303
    assert_anonymous(client, web)


# ------------------------------------------------------- settings and proxies


def test_http_issuer_only_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    from ketch.auth.oidc.errors import OidcConfigError
    from ketch.auth.oidc.settings import check_settings

    settings = configure_auth(monkeypatch, "http://idp.example.com")
    with pytest.raises(OidcConfigError, match="http:// on a host that is not this machine"):
        build_app(settings)
    for issuer in ("http://127.0.0.1:9000", "http://localhost:9000", "https://idp.example.com"):
        check_settings(configure_auth(monkeypatch, issuer).auth)
    with pytest.raises(OidcConfigError, match="trusted_proxies"):
        check_settings(
            configure_auth(monkeypatch, "https://idp.example.com", TRUSTED_PROXIES='["nope"]').auth
        )


def test_login_page_without_an_identity_provider(sqlite_engine: Engine) -> None:
    from starlette.testclient import TestClient

    get_settings.cache_clear()
    with TestClient(build_app(get_settings())) as test_client:
        response = test_client.get("/login?next=/dags")
    assert response.status_code == 200
    assert "Sign-in is not configured" in response.text
    assert "requests from this machine are let in as admin" in response.text


@pytest.mark.parametrize(
    ("peer", "redirect_uri"),
    [
        ("10.1.2.3", "https://ketch.corp.com/oauth2callback"),  # a trusted proxy
        ("192.168.7.7", "http://testserver/oauth2callback"),  # anyone else: not believed
    ],
)
def test_forwarded_headers_only_from_trusted_proxies(
    provider: OidcProvider,
    sqlite_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    peer: str,
    redirect_uri: str,
) -> None:
    from starlette.testclient import TestClient

    settings = configure_auth(monkeypatch, provider.issuer, TRUSTED_PROXIES='["10.0.0.0/8"]')
    app = build_app(settings)
    with TestClient(app, client=(peer, 40000)) as test_client:
        response = test_client.get(
            "/login",
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "ketch.corp.com"},
            follow_redirects=False,
        )
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["redirect_uri"] == [redirect_uri]


def test_configured_base_url_is_the_redirect_uri(
    provider: OidcProvider, sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind an Ingress the request says http:// and an internal host; [api] base_url wins."""
    from starlette.testclient import TestClient

    monkeypatch.setenv("KETCH__API__BASE_URL", "https://ketch.corp.com/")
    settings = configure_auth(monkeypatch, provider.issuer)
    with TestClient(build_app(settings), client=("10.1.2.3", 40000)) as test_client:
        response = test_client.get("/login", follow_redirects=False)
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["redirect_uri"] == ["https://ketch.corp.com/oauth2callback"]


# ------------------------------------------- ID tokens no honest provider issues
#
# A real provider signs only correct ID tokens, so the checks on a wrong audience,
# issuer or signature are made here with a stand-in token endpoint (joserfc, the JOSE
# library under Authlib) served to the app's real OIDC client through an httpx mock
# transport, and driven through the app's real /login and callback routes.

FORGED_ISSUER = "http://127.0.0.1:9"


class ForgedProvider:
    """Discovery, JWKS and a token endpoint whose ID token a test writes."""

    def __init__(self) -> None:
        from joserfc.jwk import RSAKey

        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})
        self.jwks_fetches = 0
        self.published = [self.key]
        self.claims: dict[str, object] = {}
        self.header: dict[str, object] = {"alg": "RS256", "kid": "k1"}
        self.signing_key = self.key

    def handle(self, request: httpx.Request) -> httpx.Response:
        from joserfc import jwt

        path = request.url.path
        if path == "/.well-known/openid-configuration":
            return httpx.Response(
                200,
                json={
                    "issuer": FORGED_ISSUER,
                    "authorization_endpoint": f"{FORGED_ISSUER}/auth",
                    "token_endpoint": f"{FORGED_ISSUER}/token",
                    "jwks_uri": f"{FORGED_ISSUER}/jwks",
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
            )
        if path == "/jwks":
            self.jwks_fetches += 1
            return httpx.Response(
                200, json={"keys": [k.as_dict(private=False) for k in self.published]}
            )
        if path == "/token":
            id_token = jwt.encode(self.header, self.claims, self.signing_key)
            return httpx.Response(
                200, json={"access_token": "at", "token_type": "Bearer", "id_token": id_token}
            )
        return httpx.Response(404)


@pytest.fixture
def forged(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ForgedProvider, object]]:
    from starlette.testclient import TestClient

    settings = configure_auth(monkeypatch, FORGED_ISSUER)
    app = build_app(settings)
    fake = ForgedProvider()
    from ketch.auth.oidc.provider import build_runtime

    app.state.oidc = build_runtime(settings)
    app.state.oidc.client.client_kwargs["transport"] = httpx.MockTransport(fake.handle)
    with TestClient(app, base_url="http://localhost") as test_client:
        yield fake, test_client


def forged_sign_in(fake: ForgedProvider, test_client: object, **changes: object) -> httpx.Response:
    """/login, then the callback with an ID token of alice's claims plus ``changes``."""
    test_client.cookies.clear()  # type: ignore[attr-defined]  # a new browser each time
    response = test_client.get("/login", follow_redirects=False)  # type: ignore[attr-defined]
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["location"]).query)
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": FORGED_ISSUER,
        "sub": "alice",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 3600,
        "nonce": query["nonce"][0],
        **ACCOUNTS["alice@corp.com"],
    }
    for key, value in changes.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    fake.claims = claims
    result: httpx.Response = test_client.get(  # type: ignore[attr-defined]
        "/oauth2callback",
        params={"code": "c", "state": query["state"][0]},
        follow_redirects=False,
    )
    return result


def test_forged_provider_honest_token_is_admitted(forged: tuple[ForgedProvider, object]) -> None:
    """The stand-in itself works: a correct token signs alice in (so refusals below mean it)."""
    fake, test_client = forged
    response = forged_sign_in(fake, test_client)
    assert response.status_code == 303, response.text
    # 30 s past expiry is within the 60 s leeway for clock skew
    assert forged_sign_in(fake, test_client, exp=int(time.time()) - 30).status_code == 303


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"aud": "another-client", "azp": CLIENT_ID}, "aud"),  # Authlib alone accepts this
        ({"aud": ["another-client"]}, "aud"),
        ({"iss": "https://accounts.example.com"}, "iss"),
        ({"iat": 4_000_000_000}, "issued in the future"),
        ({"iat": None}, "iat"),
        ({"exp": None}, "exp"),
        ({"exp": 1_000_000_000}, "ExpiredTokenError"),
        ({"nonce": "another"}, "nonce"),
        ({"nonce": None}, "nonce"),
    ],
)
def test_forged_claims_are_refused(
    forged: tuple[ForgedProvider, object], changes: dict[str, object], expected: str
) -> None:
    fake, test_client = forged
    response = forged_sign_in(fake, test_client, **changes)
    assert response.status_code == 403, response.text
    assert "failed verification" in response.text
    assert expected in response.text
    home_page = test_client.get("/", follow_redirects=False)  # type: ignore[attr-defined]
    assert home_page.is_redirect  # nobody signed in


def test_forged_signature_is_refused(forged: tuple[ForgedProvider, object]) -> None:
    from joserfc.jwk import RSAKey

    fake, test_client = forged
    fake.signing_key = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # same kid, other key
    response = forged_sign_in(fake, test_client)
    assert response.status_code == 403 and "failed verification" in response.text


def test_unknown_kid_fetches_the_jwks_once_more(forged: tuple[ForgedProvider, object]) -> None:
    from joserfc.jwk import RSAKey

    fake, test_client = forged
    assert forged_sign_in(fake, test_client).status_code == 303
    assert fake.jwks_fetches == 1  # cached from now on
    assert forged_sign_in(fake, test_client).status_code == 303
    assert fake.jwks_fetches == 1

    # A key the JWKS does not have even after a re-fetch: refused after exactly one more.
    fake.signing_key = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    fake.header = {"alg": "RS256", "kid": "k2"}
    assert forged_sign_in(fake, test_client).status_code == 403
    assert fake.jwks_fetches == 2

    # Rotated: the provider now publishes k2; the cached set lacks it, one re-fetch finds it.
    fake.published = [fake.signing_key]
    assert forged_sign_in(fake, test_client).status_code == 303
    assert fake.jwks_fetches == 3


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"email_verified": "false"}, "is not verified"),
        ({"email_verified": None}, "is not verified"),
        ({"email": None}, "did not tell which email address"),
    ],
)
def test_forged_identity_is_refused(
    forged: tuple[ForgedProvider, object], changes: dict[str, object], expected: str
) -> None:
    fake, test_client = forged
    response = forged_sign_in(fake, test_client, **changes)
    assert response.status_code == 403
    assert expected in response.text


def test_callback_from_another_issuer_is_refused(forged: tuple[ForgedProvider, object]) -> None:
    """RFC 9207: an ``iss`` callback parameter names the provider that answered."""
    _, test_client = forged
    response = test_client.get("/login", follow_redirects=False)  # type: ignore[attr-defined]
    state = parse_qs(urlsplit(response.headers["location"]).query)["state"][0]
    response = test_client.get(  # type: ignore[attr-defined]
        "/oauth2callback",
        params={"code": "c", "state": state, "iss": "https://mix-up.example"},
        follow_redirects=False,
    )
    assert response.status_code == 400
    assert "another identity provider" in response.text
