"""Roles and who gets which: Airflow's four roles, decided by rules in settings.

Google sends no groups, so a role comes from the verified email: an exact-email rule,
else a domain rule, else ``[auth] default_role``, all evaluated again at every sign-in
and every ``session_recheck_interval``. A domain counts only when the ``hd`` claim (set
by Google for Workspace accounts) and the email's domain are both allowed: a personal
gmail.com account that merely claims a company address has no ``hd`` and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from ketch.config import AuthSettings, Role

ROLES: tuple[Role, ...] = ("viewer", "user", "op", "admin")
"""Airflow's roles, weakest first: each one may do everything the ones before it may."""

_RANK = {role: rank for rank, role in enumerate(ROLES)}


def at_least(role: Role, required: Role) -> bool:
    """Whether ``role`` may do what ``required`` may."""
    return _RANK[role] >= _RANK[required]


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of a sign-in: a role, or the reason there is none."""

    role: Role | None
    reason: str = ""


def admit(
    auth: AuthSettings, *, email: str, email_verified: bool, hosted_domain: str | None
) -> Admission:
    """The role of a verified identity, first matching rule wins; refusal says why."""
    email = email.strip().lower()
    if not email_verified:
        return Admission(None, f"the email address {email} is not verified by the provider")
    domain = email.rpartition("@")[2]
    allowed = {d.lower() for d in auth.allowed_domains}
    hd = (hosted_domain or "").lower()
    domain_allowed = bool(hd) and hd in allowed and domain in allowed
    for rule in auth.role_rules:
        if rule.email is not None and rule.email.strip().lower() == email:
            return Admission(rule.role)
        if rule.domain is not None and rule.domain.lower() == domain and domain_allowed:
            return Admission(rule.role)
    if not domain_allowed:
        return Admission(None, _domain_refusal(email, domain, hd, allowed))
    if auth.default_role is not None:
        return Admission(auth.default_role)
    return Admission(None, f"no role rule matches {email} and no default role is set")


def _domain_refusal(email: str, domain: str, hd: str, allowed: set[str]) -> str:
    if not allowed:
        return f"{email} has no role rule, and no domain is allowed ([auth] allowed_domains)"
    if not hd:
        return f"{email} is not a Google Workspace account of an allowed domain (no hd claim)"
    if hd not in allowed:
        return f"{email} belongs to the Workspace domain {hd}, which is not allowed"
    return f"the address's domain {domain} is not allowed (although its Workspace domain {hd} is)"
