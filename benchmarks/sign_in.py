"""Sign-in round trip against the local OpenID Connect provider:
``python -m benchmarks.sign_in [--backend postgresql] [--sign-ins 50]``.

The test provider (npm oidc-provider, Google-like claims) and ``ketch web`` (uvicorn in
this process) on loopback, a fresh cookie jar per sign-in, walking what a browser does:
``GET /login`` → the provider's login and consent pages → the callback → ``GET /``.

Figures (printed and written to benchmarks/results/sign_in.json), p50 and p99 over the
sign-ins after one warm-up:

- ``round_trip_ms``: the whole walk, the provider's pages included;
- ``login_ms``: ketch's ``/login`` (discovery is cached after the first);
- ``callback_ms``: ketch's callback: code exchange with the provider, ID token
  verification, role rules, the sign-in record and audit entry, the session cookie.

Measurements, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).parent / "results"
CLIENT_ID, CLIENT_SECRET = "ketch-bench", "ketch-bench-secret"


def _pct(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100)[q - 1], 2)


def run(backend: str, n: int) -> dict[str, Any]:
    from tests.integration.test_sign_in import serve
    from tests.support.oidc_provider import (
        OidcClient,
        google_claims,
        oidc_provider,
        sign_in_with_httpx,
    )
    from tests.support.postgres import free_port, start_postgres

    from ketch.api.app import create_app
    from ketch.config import Settings
    from ketch.db.engine import get_engine
    from ketch.db.migrate import migrate

    home = Path(tempfile.mkdtemp(prefix="ketch-bench-signin-"))
    os.environ["KETCH_HOME"] = str(home)
    server = start_postgres() if backend == "postgresql" else None
    try:
        db_url = server.create_database("bench") if server else f"sqlite:///{home / 'ketch.db'}"
        migrate(get_engine(db_url))
        accounts = {"alice@corp.com": google_claims("alice@corp.com", hd="corp.com")}
        with oidc_provider(accounts) as provider:
            port = free_port()
            url = f"http://localhost:{port}"
            provider.set_clients([OidcClient(CLIENT_ID, CLIENT_SECRET, [f"{url}/oauth2callback"])])
            settings = Settings.model_validate(
                {
                    "database": {"sql_alchemy_conn": db_url},
                    "auth": {
                        "oidc_issuer": provider.issuer,
                        "oidc_client_id": CLIENT_ID,
                        "oidc_client_secret": CLIENT_SECRET,
                        "allowed_domains": ["corp.com"],
                        "role_rules": [{"domain": "corp.com", "role": "viewer"}],
                    },
                }
            )
            rounds: dict[str, list[float]] = {
                "round_trip_ms": [],
                "login_ms": [],
                "callback_ms": [],
            }
            with serve(create_app(settings), port):
                for i in range(n + 1):
                    with httpx.Client(timeout=15) as client:
                        start = time.perf_counter()
                        login = client.get(f"{url}/login")
                        login_done = time.perf_counter()
                        back = sign_in_with_httpx(
                            client, login.headers["location"], "alice@corp.com"
                        )
                        callback_start = time.perf_counter()
                        landed = client.get(back.headers["location"])
                        callback_done = time.perf_counter()
                        home_page = client.get(f"{url}/")
                        end = time.perf_counter()
                        assert landed.status_code in (302, 303) and home_page.status_code == 200
                    if i == 0:
                        continue  # warm-up: discovery, JWKS, connections
                    rounds["round_trip_ms"].append((end - start) * 1000)
                    rounds["login_ms"].append((login_done - start) * 1000)
                    rounds["callback_ms"].append((callback_done - callback_start) * 1000)
        return {k: {"p50": _pct(v, 50), "p99": _pct(v, 99)} for k, v in rounds.items()}
    finally:
        if server:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--sign-ins", type=int, default=50)
    args = parser.parse_args()
    figures = run(args.backend, args.sign_ins)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sign_in.json").write_text(json.dumps({args.backend: figures}, indent=2) + "\n")
    print(f"{args.backend}: {args.sign_ins} sign-ins against the local provider")
    for name, fig in figures.items():
        print(f"  {name:14} p50 {fig['p50']:8.2f} ms  p99 {fig['p99']:8.2f} ms")


if __name__ == "__main__":
    main()
