"""Authentication: per-try tokens (and, later, OIDC sign-in)."""
