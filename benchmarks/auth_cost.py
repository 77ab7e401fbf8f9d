"""Cost of authentication per request: ``python -m benchmarks.auth_cost [--backend postgresql]
[--requests 2000]``.

One ``ketch web`` app (uvicorn, in this process, on a loopback port) per way of being let
in, all on the same database; a client sends ``--requests`` sequential ``GET
/api/v1/importErrors`` (an authorized read that does one small query) and measures each
round trip. Ways in:

- ``off``: ``[auth] mode = none``, no authentication work at all (the baseline);
- ``loopback``: no identity provider, the request comes from 127.0.0.1 (local admin);
- ``session``: an identity provider is configured and the request carries a signed session
  cookie (signature, expiry and role from the cookie; no database read between re-checks);
- ``session_recheck``: the same with ``session_recheck_interval = 1``: the rules and the
  disabled flag are re-read from the database about once a second per session;
- ``bearer``: an API token (one indexed SELECT of its hash per request).

Figures (printed and written to benchmarks/results/auth_cost.json): p50 and p99 of each,
and the p50/p99 added over the baseline. Measurements, never assertions.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from itsdangerous import TimestampSigner
from sqlalchemy.orm import Session

RESULTS = Path(__file__).parent / "results"
SESSION_SECRET = "bench-session-secret-" * 3
PATH = "/api/v1/importErrors"


def _settings(db_url: str, home: Path, **auth: Any) -> Any:
    from ketch.config import Settings

    return Settings.model_validate(
        {
            "database": {"sql_alchemy_conn": db_url},
            "logging": {"base_log_folder": str(home / "logs")},
            "auth": {"session_secret": SESSION_SECRET, **auth},
        }
    )


@contextmanager
def serve(settings: Any) -> Iterator[str]:
    import uvicorn
    from tests.support.postgres import free_port

    from ketch.api.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _cookie() -> str:
    now = int(time.time())
    data = {
        "user": {
            "email": "ann@corp.com",
            "name": "Ann",
            "role": "viewer",
            "hd": "corp.com",
            "iat": now,
            "seen": now,
            "checked": now,
        },
        "csrf": "x",
    }
    return (
        TimestampSigner(SESSION_SECRET).sign(base64.b64encode(json.dumps(data).encode())).decode()
    )


def measure(url: str, n: int, headers: dict[str, str], cookies: dict[str, str]) -> list[float]:
    times = []
    with httpx.Client(base_url=url, headers=headers, cookies=cookies) as client:
        for _ in range(50):  # warm up connections, caches and the thread pool
            client.get(PATH).raise_for_status()
        for _ in range(n):
            start = time.perf_counter()
            client.get(PATH).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return times


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def run(backend: str, n: int) -> dict[str, Any]:
    from tests.support.postgres import start_postgres

    from ketch.auth import api_tokens
    from ketch.db.engine import get_engine
    from ketch.db.migrate import migrate

    home = Path(tempfile.mkdtemp(prefix="ketch-bench-auth-"))
    import os

    os.environ["KETCH_HOME"] = str(home)
    server = start_postgres() if backend == "postgresql" else None
    try:
        db_url = (
            server.create_database("bench_auth") if server else f"sqlite:///{home / 'ketch.db'}"
        )
        engine = get_engine(db_url)
        migrate(engine)
        with Session(engine) as session:
            _, secret = api_tokens.create_token(
                session,
                name="bench",
                role="viewer",
                expires_in=timedelta(days=1),
                created_by="bench",
            )
            session.commit()
        oidc = {
            "oidc_client_id": "bench",
            "oidc_client_secret": "bench",
            "oidc_issuer": "http://127.0.0.1:9/",
            "allowed_domains": ["corp.com"],
            "role_rules": [{"domain": "corp.com", "role": "viewer"}],
        }
        modes: dict[str, tuple[dict[str, Any], dict[str, str], dict[str, str]]] = {
            "off": ({"mode": "none"}, {}, {}),
            "loopback": ({}, {}, {}),
            "session": (oidc, {}, {"ketch_session": _cookie()}),
            "session_recheck": (
                {**oidc, "session_recheck_interval": 1},
                {},
                {"ketch_session": _cookie()},
            ),
            "bearer": (oidc, {"Authorization": f"Bearer {secret}"}, {}),
        }
        figures: dict[str, Any] = {}
        for mode, (auth, headers, cookies) in modes.items():
            with serve(_settings(db_url, home, **auth)) as url:
                times = measure(url, n, headers, cookies)
            figures[mode] = {
                "p50_ms": round(_pct(times, 50), 3),
                "p99_ms": round(_pct(times, 99), 3),
            }
        base = figures["off"]
        for fig in figures.values():
            fig["added_p50_ms"] = round(fig["p50_ms"] - base["p50_ms"], 3)
            fig["added_p99_ms"] = round(fig["p99_ms"] - base["p99_ms"], 3)
        engine.dispose()
        return figures
    finally:
        if server:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="postgresql")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = {backend: run(backend, args.requests) for backend in backends}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "auth_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    for backend, figures in results.items():
        print(f"{backend}: {args.requests} sequential GET {PATH} per mode")
        for mode, fig in figures.items():
            print(
                f"  {mode:16} p50 {fig['p50_ms']:7.3f} ms  p99 {fig['p99_ms']:7.3f} ms"
                f"  (+{fig['added_p50_ms']:.3f} / +{fig['added_p99_ms']:.3f} ms)"
            )


if __name__ == "__main__":
    main()
