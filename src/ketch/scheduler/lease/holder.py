"""Who a scheduler process is as a lease holder, and what its connections say.

A new holder finds a paused or cut-off old holder's PostgreSQL sessions by their
``application_name`` (derived from the holder id) to terminate them; TCP keepalives and
``tcp_user_timeout`` bound how long a dead network can hang a statement.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any

from sqlalchemy import Engine, event

from ketch.config import SchedulerSettings


def new_holder_id() -> str:
    """Unique per process start: host (the pod name on Kubernetes), pid and a random tail
    (pid 1 in every container, so the tail tells restarts apart)."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(3)}"


def application_name(holder: str) -> str:
    """The ``application_name`` of a holder's PostgreSQL connections (63 bytes at most),
    how a new holder finds the old one's backends to terminate them."""
    return f"ketch-scheduler/{holder}"[:63]


def tag_connections(engine: Engine, holder: str, settings: SchedulerSettings) -> None:
    """Name the process's PostgreSQL connections after the holder (so a new holder can
    terminate them) and bound how long a dead network can hang one (TCP keepalives and
    ``tcp_user_timeout`` at about the lease TTL). Existing pooled connections are dropped."""
    if engine.dialect.name != "postgresql":
        return
    ttl_ms = int(settings.lease_ttl * 1000)

    @event.listens_for(engine, "do_connect")
    def _connect_params(_dialect: Any, _rec: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["application_name"] = application_name(holder)
        cparams.setdefault("keepalives", 1)
        cparams.setdefault("keepalives_idle", max(1, int(settings.lease_ttl / 3)))
        cparams.setdefault("keepalives_interval", 1)
        cparams.setdefault("keepalives_count", 3)
        if _libpq_version() >= 120000:  # libpq 12 added it
            cparams.setdefault("tcp_user_timeout", max(1000, ttl_ms))

    engine.dispose()


def _libpq_version() -> int:
    try:
        import psycopg

        return int(psycopg.pq.version())
    except Exception:  # another driver: leave its settings alone
        return 0
