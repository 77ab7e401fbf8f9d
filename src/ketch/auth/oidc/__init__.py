"""OpenID Connect sign-in: Google by default, any provider by its issuer URL.

Authlib's Starlette client does the protocol: discovery at
``{issuer}/.well-known/openid-configuration``, the authorization code flow with PKCE
(S256), ``state`` and ``nonce`` generated and kept in the signed session cookie (a state
is used once), and the ID token's signature checked against the provider's JWKS; a
token signed with a ``kid`` that the cached JWKS lacks makes Authlib fetch the JWKS
again once, so a key rotated at the provider is picked up at the next sign-in.

What this package adds to Authlib:

- the audience: Authlib 1.9 checks ``aud`` only through ``azp``; here ``aud`` must name
  our client id, and ``iss``, ``sub``, ``exp`` and ``iat`` are required (60 s leeway);
- the issuer that discovery returns must be the configured one, and an ``iss`` callback
  parameter (RFC 9207) must match it;
- an ``http://`` issuer only on a loopback host (:func:`ketch.auth.oidc.settings.check_settings`,
  at app build);
- who gets in: a verified email, ``hd`` and the role rules (:func:`ketch.auth.roles.admit`),
  an account an admin disabled (:func:`ketch.auth.users.record_sign_in`), the audit log;
- the redirect URI from the request, believing ``X-Forwarded-Proto``/``X-Forwarded-Host``
  only from a peer in ``[auth] trusted_proxies``.

Routes (``include_in_schema=False``): ``GET /login?next=/path``, ``GET
{oidc_callback_path}``, ``POST /logout`` (needs the session's CSRF token) and ``GET
/logout`` (the signed-out page). A refused account gets a 403 page naming the account
and the reason, never a redirect back to the provider.

Modules:

- ``routes``: the sign-in routes and :func:`~ketch.auth.oidc.routes.install`
- ``provider``: the identity provider as an app knows it (Authlib client, discovery
  document checked, the ID token's required claims)
- ``records``: what sign-in and sign-out write (users, the audit log)
- ``settings``: the ``[auth]`` settings that cannot be served safely, refused at app build
- ``proxies``: trusted proxies, the browser's URL and the caller's address behind them
- ``paths``: the routes' paths and where sign-in may send the browser afterwards
- ``errors``: the ways sign-in fails (settings, an unusable or unreachable provider)
"""
