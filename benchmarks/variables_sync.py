"""Variable sync benchmarks against moto in server mode (a separate process, a real HTTP AWS API).

``python -m benchmarks.variables_sync [--backend sqlite|postgresql|both] [--interval S] [--samples N]``

Figures (printed, and written to benchmarks/results/variables_sync.json):

- propagation: a real ``ketch standalone`` syncs one secret every ``--interval`` seconds;
  time from ``PutSecretValue`` returning to the new value being served by the web
  process (REST ``GET /api/v1/variables/{key}``, the same database read a task's
  ``Variable.get`` makes through the execution API). Target: <= interval + 1 s.
- idle_calls: AWS API calls per poll with nothing changed, for a 500-key JSON secret and
  for a prefix source of 500 secrets, and per hour at the default 30 s interval.
  Target: one call per poll per source.
- sync_2000: scheduler time (CPU seconds of this process; moto runs elsewhere) and wall
  time for one sync of a 2,000-key secret: first import, every value changed, one value
  changed, nothing changed. Target: <= 1 s.

These are measurements, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.support.moto_server import DUMMY_CREDENTIALS, REGION, MotoProcess, secretsmanager_client

RESULTS = Path(__file__).parent / "results"
EMPTY_DAGS = Path(tempfile.gettempdir()) / "ketch-bench-no-dags"


@contextmanager
def database_url(backend: str, home: Path, name: str) -> Any:
    if backend == "sqlite":
        yield f"sqlite:///{home / 'ketch.db'}"
        return
    from tests.support.postgres import start_postgres

    server = start_postgres()
    try:
        yield server.create_database(name)
    finally:
        server.stop()


def counting_client(url: str) -> tuple[Any, Counter[str]]:
    from ketch.variables.sources.aws_secrets_manager import make_client

    client = make_client(region=REGION, endpoint_url=url)
    calls: Counter[str] = Counter()
    client.meta.events.register(
        "before-call.secrets-manager", lambda model=None, **_: calls.update([model.name])
    )
    return client, calls


def in_process_settings(home: Path, db_url: str) -> Any:
    os.environ["KETCH_HOME"] = str(home)
    os.environ["KETCH__DATABASE__SQL_ALCHEMY_CONN"] = db_url
    from ketch.config import get_settings
    from ketch.db.engine import dispose_engines, get_engine
    from ketch.db.migrate import migrate

    get_settings.cache_clear()
    dispose_engines()
    engine = get_engine(db_url)
    migrate(engine)
    return get_settings(), engine


def bench_idle_calls(moto_url: str, home: Path, db_url: str, polls: int = 20) -> dict[str, Any]:
    from ketch.variables.sources.aws_secrets_manager import PrefixSecretsSource, SecretJsonSource
    from ketch.variables.sync import SyncService

    aws = secretsmanager_client(moto_url)
    aws.create_secret(
        Name="bench/idle.json", SecretString=json.dumps({f"key_{i}": f"v{i}" for i in range(500)})
    )
    for i in range(500):
        aws.create_secret(Name=f"bench/idle-prefix/prefixed_{i}", SecretString=f"v{i}")
    settings, engine = in_process_settings(home, db_url)
    figures: dict[str, Any] = {}
    for name, make in (
        ("json_secret_500_keys", lambda c: SecretJsonSource(c, "bench/idle.json")),
        ("prefix_500_secrets", lambda c: PrefixSecretsSource(c, name_prefix="bench/idle-prefix/")),
    ):
        client, calls = counting_client(moto_url)
        service = SyncService(settings, engine, [(make(client), False)])
        [status] = service.run_once()
        assert status.ok and status.managed_keys == 500, status
        first = dict(calls)
        calls.clear()
        for _ in range(polls):
            service.run_once()
        per_poll = sum(calls.values()) / polls
        figures[name] = {
            "first_sync_calls": first,
            "idle_calls_per_poll": per_poll,
            "idle_calls_by_operation": {k: v / polls for k, v in calls.items()},
            "idle_calls_per_hour_at_30s": per_poll * 3600 / 30,
        }
    return figures


def bench_sync_2000(moto_url: str, home: Path, db_url: str) -> dict[str, Any]:
    from ketch.variables.sources.aws_secrets_manager import SecretJsonSource
    from ketch.variables.sync import SyncService

    aws = secretsmanager_client(moto_url)
    values = {f"key_{i:04d}": f"value-{i}-" + "x" * 40 for i in range(2000)}
    aws.create_secret(Name="bench/big.json", SecretString=json.dumps(values))
    settings, engine = in_process_settings(home, db_url)
    client, _ = counting_client(moto_url)
    service = SyncService(settings, engine, [(SecretJsonSource(client, "bench/big.json"), False)])

    def timed(label: str) -> dict[str, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        [status] = service.run_once()
        assert status.ok and status.managed_keys == 2000, status
        return {
            "cpu_s": round(time.process_time() - cpu, 3),
            "wall_s": round(time.perf_counter() - wall, 3),
        }

    figures = {"first_import": timed("first")}
    aws.put_secret_value(
        SecretId="bench/big.json", SecretString=json.dumps({k: v + "!" for k, v in values.items()})
    )
    figures["all_2000_changed"] = timed("all")
    values["key_0007"] = "changed"
    aws.put_secret_value(SecretId="bench/big.json", SecretString=json.dumps(values))
    figures["one_changed"] = timed("one")
    figures["unchanged"] = timed("unchanged")
    return figures


def bench_propagation(
    moto_url: str, home: Path, db_url: str, interval: float, samples: int
) -> dict[str, Any]:
    aws = secretsmanager_client(moto_url)
    aws.create_secret(Name="bench/live.json", SecretString=json.dumps({"probe": "0"}))
    EMPTY_DAGS.mkdir(exist_ok=True)
    sources = [
        {
            "kind": "aws-secrets-manager",
            "secret_id": "bench/live.json",
            "endpoint_url": moto_url,
            "sensitive": False,
        }
    ]
    env = KetchEnv(
        home=home,
        db_url=db_url,
        dags_folder=EMPTY_DAGS,
        extra={
            "KETCH__VARIABLES__SYNC_SOURCES": json.dumps(sources),
            "KETCH__VARIABLES__SYNC_INTERVAL": str(interval),
        },
    )
    api = Api(env.base_url)

    def served() -> str | None:
        answer = api.http.get("/api/v1/variables/probe")
        return answer.json()["value"] if answer.status_code == 200 else None

    latencies = []
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: served() == "0", 60, 0.01, "first sync")
        for sample in range(1, samples + 1):
            time.sleep(random.uniform(0, interval))  # a random phase against the poll
            aws.put_secret_value(
                SecretId="bench/live.json", SecretString=json.dumps({"probe": str(sample)})
            )
            put_done = time.perf_counter()
            wait_for(lambda s=str(sample): served() == s, interval + 30, 0.005, f"sample {sample}")
            latencies.append(time.perf_counter() - put_done)
    return {
        "interval_s": interval,
        "samples": samples,
        "median_s": round(statistics.median(latencies), 3),
        "max_s": round(max(latencies), 3),
        "max_minus_interval_s": round(max(latencies) - interval, 3),
    }


def run_backend(backend: str, interval: float, samples: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ketch-bench-varsync-"))
    results: dict[str, Any] = {}
    try:
        for name, bench in (
            ("idle_calls", lambda url, home, db: bench_idle_calls(url, home, db)),
            ("sync_2000", lambda url, home, db: bench_sync_2000(url, home, db)),
            (
                "propagation",
                lambda url, home, db: bench_propagation(url, home, db, interval, samples),
            ),
        ):
            home = tmp / name
            home.mkdir()
            moto = MotoProcess()
            moto.start()
            try:
                with database_url(backend, home, f"bench_{name}") as db_url:
                    results[name] = bench(moto.url, home, db_url)
            finally:
                moto.stop()
            print(backend, name, json.dumps(results[name]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--interval", type=float, default=5.0, help="poll interval of propagation")
    parser.add_argument("--samples", type=int, default=6, help="propagation samples")
    args = parser.parse_args(argv)
    os.environ.update(DUMMY_CREDENTIALS)
    os.environ.setdefault("AWS_MAX_ATTEMPTS", "2")
    for key in [k for k in os.environ if k.startswith("KETCH__")]:
        del os.environ[key]
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = {b: run_backend(b, args.interval, args.samples) for b in backends}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "variables_sync.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
