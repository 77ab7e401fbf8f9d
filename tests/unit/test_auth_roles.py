"""Who gets which role: allowed domains checked on both hd and email, rules first match."""

from __future__ import annotations

import logging

import pytest

from ketch.auth.exposure import UnsafeExposure, check_exposure, is_loopback_host
from ketch.auth.roles import admit, at_least
from ketch.config import AuthSettings, RoleRule, Settings


def _auth(**kwargs: object) -> AuthSettings:
    base: dict[str, object] = {
        "allowed_domains": ["corp.com"],
        "role_rules": [
            RoleRule(email="lead@corp.com", role="admin"),
            RoleRule(email="carol@gmail.com", role="op"),
            RoleRule(domain="corp.com", role="viewer"),
        ],
    }
    base.update(kwargs)
    return AuthSettings.model_validate(base)


def test_domain_rule_needs_hd_and_email_domain_allowed() -> None:
    auth = _auth()
    assert (
        admit(auth, email="ann@corp.com", email_verified=True, hosted_domain="corp.com").role
        == "viewer"
    )
    # hd says corp.com but the address is elsewhere
    refused = admit(auth, email="mallory@evil.com", email_verified=True, hosted_domain="corp.com")
    assert refused.role is None and "domain evil.com is not allowed" in refused.reason
    # a personal account claiming a corp address has no hd
    no_hd = admit(auth, email="eve@corp.com", email_verified=True, hosted_domain=None)
    assert no_hd.role is None and "no hd claim" in no_hd.reason
    other = admit(auth, email="bob@other.com", email_verified=True, hosted_domain="other.com")
    assert other.role is None and "other.com" in other.reason


def test_exact_email_rule_admits_a_contractor_from_any_domain() -> None:
    assert (
        admit(_auth(), email="Carol@Gmail.com", email_verified=True, hosted_domain=None).role
        == "op"
    )


def test_unverified_email_is_refused_even_with_a_rule() -> None:
    result = admit(_auth(), email="lead@corp.com", email_verified=False, hosted_domain="corp.com")
    assert result.role is None and "not verified" in result.reason


def test_first_matching_rule_wins() -> None:
    auth = _auth(
        role_rules=[
            RoleRule(domain="corp.com", role="viewer"),
            RoleRule(email="lead@corp.com", role="admin"),
        ]
    )
    assert (
        admit(auth, email="lead@corp.com", email_verified=True, hosted_domain="corp.com").role
        == "viewer"
    )


def test_default_role_only_for_allowed_domains() -> None:
    auth = _auth(role_rules=[], default_role="user")
    assert (
        admit(auth, email="x@corp.com", email_verified=True, hosted_domain="corp.com").role
        == "user"
    )
    assert (
        admit(auth, email="x@other.com", email_verified=True, hosted_domain="other.com").role
        is None
    )
    none = admit(
        _auth(role_rules=[]), email="x@corp.com", email_verified=True, hosted_domain="corp.com"
    )
    assert none.role is None and "no default role" in none.reason


def test_role_rule_needs_exactly_one_subject() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RoleRule(email="a@b.c", domain="b.c", role="admin")
    with pytest.raises(ValueError, match="exactly one"):
        RoleRule(role="admin")


def test_role_order() -> None:
    assert at_least("admin", "op") and at_least("op", "op") and not at_least("user", "op")


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2", "app.localhost"]
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "example.com", "localhost.evil.com", ""])
def test_not_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(host)


def test_exposure_refuses_the_network_without_sign_in() -> None:
    with pytest.raises(UnsafeExposure, match="KETCH__AUTH__OIDC_CLIENT_ID") as info:
        check_exposure(Settings(), "0.0.0.0")
    assert "\n" not in str(info.value)


def test_exposure_allows_loopback_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "ketch.auth"):
        check_exposure(Settings(), "127.0.0.1")
    assert "let in as admin" in caplog.text


def test_exposure_mode_none_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.model_validate({"auth": {"mode": "none"}})
    with caplog.at_level(logging.WARNING, "ketch.auth"):
        check_exposure(settings, "0.0.0.0")
    assert "AUTHENTICATION IS OFF" in caplog.text


def test_exposure_with_identity_provider_is_fine() -> None:
    settings = Settings.model_validate(
        {"auth": {"oidc_client_id": "id", "oidc_client_secret": "secret"}}
    )
    check_exposure(settings, "0.0.0.0")
