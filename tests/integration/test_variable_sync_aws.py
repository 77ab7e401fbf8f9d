"""Sync from AWS Secrets Manager against moto in server mode (a real HTTP AWS API).

Every scenario of the issue: a secret appears as variables, is updated, loses a key,
gets malformed JSON (nothing changes, the error is reported), is rotated to a new
version; a prefix source with 25 secrets (two BatchGetSecretValue pages); the cost in
steady state (one call per poll); AWS errors; an outage of the endpoint.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from botocore.stub import Stubber
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.config import Settings, get_settings
from ketch.db.models import Variable, VariableAuditLog
from ketch.variables import crypto, store
from ketch.variables.sources import SourceError, Unchanged
from ketch.variables.sources.aws_secrets_manager import (
    PrefixSecretsSource,
    SecretJsonSource,
    make_client,
)
from ketch.variables.sync import SyncService, run_sync_once, sync_status
from tests.support.moto_server import REGION, MotoProcess, MotoServer

SECRET = "devops/airflow/variables.json"


class CountingClient:
    """A real boto3 client for moto whose API calls are counted by operation."""

    def __init__(self, url: str) -> None:
        self.client = make_client(region=REGION, endpoint_url=url)
        self.calls: Counter[str] = Counter()
        self.client.meta.events.register("before-call.secrets-manager", self._count)

    def _count(self, model: Any = None, **_: Any) -> None:
        self.calls[model.name] += 1

    def take(self) -> dict[str, int]:
        calls = dict(self.calls)
        self.calls.clear()
        return calls


def values(engine: Engine) -> dict[str, str]:
    fernet = crypto.get_fernet(get_settings())
    with Session(engine) as session:
        return {v.key: crypto.decrypt(fernet, v.val) for v in session.scalars(select(Variable))}


def test_secret_lifecycle(moto: MotoServer, engine: Engine) -> None:
    aws = moto.client()
    aws.create_secret(Name=SECRET, SecretString=json.dumps({"env": "prod", "limits": {"cpu": 2}}))
    counting = CountingClient(moto.url)
    source = SecretJsonSource(counting.client, SECRET)
    service = SyncService(get_settings(), engine, [(source, True)])

    # Created: the keys appear (non-string values as their JSON text).
    [status] = service.run_once()
    assert status.ok and status.managed_keys == 2
    assert values(engine) == {"env": "prod", "limits": '{"cpu": 2}'}
    first_version = status.version
    assert counting.take() == {"DescribeSecret": 1, "GetSecretValue": 1}

    # Nothing changed: one DescribeSecret, no value fetched, nothing written.
    for _ in range(3):
        service.run_once()
    assert counting.take() == {"DescribeSecret": 3}

    # Updated and a key removed.
    aws.put_secret_value(SecretId=SECRET, SecretString=json.dumps({"env": "staging"}))
    [status] = service.run_once()
    assert status.version != first_version and status.managed_keys == 1
    assert values(engine) == {"env": "staging"}

    # Malformed JSON: nothing changes, the error is reported without the value.
    aws.put_secret_value(SecretId=SECRET, SecretString='{"env": "broken-secret-value", ')
    [status] = service.run_once()
    assert not status.ok and status.consecutive_failures == 1
    assert "not valid JSON" in (status.last_error or "")
    assert "broken-secret-value" not in (status.last_error or "")
    assert values(engine) == {"env": "staging"}
    aws.put_secret_value(SecretId=SECRET, SecretString=json.dumps(["not", "an", "object"]))
    [status] = service.run_once()
    assert "not an object" in (status.last_error or "") and status.consecutive_failures == 2
    assert values(engine) == {"env": "staging"}
    with Session(engine) as session:
        [shown] = sync_status(session)
    assert shown.last_error == status.last_error and shown.last_success_at is not None

    # Rotated to a new good version: it applies normally.
    rotated = aws.put_secret_value(
        SecretId=SECRET, SecretString=json.dumps({"env": "prod", "new_key": "n"})
    )
    [status] = service.run_once()
    assert status.ok and status.version == rotated["VersionId"]
    assert values(engine) == {"env": "prod", "new_key": "n"}

    # What a task reads (through V1's store, as the execution API does).
    with Session(engine) as session:
        record = store.get_variable(session, get_settings(), "new_key")
    assert record.value == "n" and record.source == f"aws-secrets-manager:{SECRET}"
    assert record.is_sensitive

    with Session(engine) as session:
        actions = [
            (a.key, a.action)
            for a in session.scalars(select(VariableAuditLog).order_by(VariableAuditLog.id))
        ]
    assert actions == [
        ("env", "created"),
        ("limits", "created"),
        ("env", "updated"),
        ("limits", "deleted"),
        ("env", "updated"),
        ("new_key", "created"),
    ]


def test_rollback_of_awscurrent_to_an_older_version(
    moto: MotoServer, sqlite_engine: Engine
) -> None:
    aws = moto.client()
    v1 = aws.create_secret(Name=SECRET, SecretString=json.dumps({"k": "one"}))["VersionId"]
    v2 = aws.put_secret_value(SecretId=SECRET, SecretString=json.dumps({"k": "two"}))["VersionId"]
    service = SyncService(
        get_settings(), sqlite_engine, [(SecretJsonSource(moto.client(), SECRET), True)]
    )
    assert service.run_once()[0].version == v2
    assert values(sqlite_engine) == {"k": "two"}
    aws.update_secret_version_stage(
        SecretId=SECRET, VersionStage="AWSCURRENT", MoveToVersionId=v1, RemoveFromVersionId=v2
    )
    assert service.run_once()[0].version == v1
    assert values(sqlite_engine) == {"k": "one"}


def test_prefix_source_with_25_secrets(moto: MotoServer, engine: Engine) -> None:
    aws = moto.client()
    for i in range(25):
        aws.create_secret(Name=f"ketch/variables/var_{i:02d}", SecretString=f"value-{i}")
    aws.create_secret(Name="other/not_mine", SecretString="x")
    aws.create_secret(Name="ketch/variables/no_value_yet")  # no version: not a variable
    counting = CountingClient(moto.url)
    source = PrefixSecretsSource(counting.client, name_prefix="ketch/variables/")
    service = SyncService(get_settings(), engine, [(source, True)])

    [status] = service.run_once()
    assert status.ok and status.managed_keys == 25
    assert values(engine) == {f"var_{i:02d}": f"value-{i}" for i in range(25)}
    assert counting.take() == {"ListSecrets": 1, "BatchGetSecretValue": 2}  # 20 + 5

    service.run_once()
    assert counting.take() == {"ListSecrets": 1}  # steady state: one call

    aws.put_secret_value(SecretId="ketch/variables/var_03", SecretString="changed")
    aws.delete_secret(SecretId="ketch/variables/var_07", ForceDeleteWithoutRecovery=True)
    [status] = service.run_once()
    assert counting.take() == {"ListSecrets": 1, "BatchGetSecretValue": 1}  # only the change
    assert status.managed_keys == 24
    current = values(engine)
    assert current["var_03"] == "changed" and "var_07" not in current and len(current) == 24


def test_tag_source_selects_by_tag(moto: MotoServer, sqlite_engine: Engine) -> None:
    aws = moto.client()
    aws.create_secret(Name="a/one", SecretString="1", Tags=[{"Key": "ketch", "Value": "yes"}])
    aws.create_secret(Name="a/two", SecretString="2", Tags=[{"Key": "ketch", "Value": "no"}])
    aws.create_secret(Name="b/three", SecretString="3", Tags=[{"Key": "ketch", "Value": "yes"}])
    source = PrefixSecretsSource(moto.client(), name_prefix="a/", tags={"ketch": "yes"})
    SyncService(get_settings(), sqlite_engine, [(source, True)]).run_once()
    assert values(sqlite_engine) == {"one": "1"}


def test_missing_secret_is_reported(moto: MotoServer, sqlite_engine: Engine) -> None:
    service = SyncService(
        get_settings(), sqlite_engine, [(SecretJsonSource(moto.client(), "nope"), True)]
    )
    [status] = service.run_once()
    assert not status.ok and "ResourceNotFoundException" in (status.last_error or "")
    assert values(sqlite_engine) == {}


@pytest.mark.parametrize(
    "code", ["AccessDeniedException", "ThrottlingException", "InternalServiceError"]
)
def test_aws_errors_change_nothing(code: str, moto: MotoServer, sqlite_engine: Engine) -> None:
    """Error answers moto cannot produce, from botocore's Stubber on a real client."""
    aws = moto.client()
    aws.create_secret(Name=SECRET, SecretString=json.dumps({"k": "v"}))
    client = make_client(region=REGION, endpoint_url=moto.url)
    service = SyncService(get_settings(), sqlite_engine, [(SecretJsonSource(client, SECRET), True)])
    service.run_once()
    with Stubber(client) as stub:
        stub.add_client_error("describe_secret", service_error_code=code, service_message="no")
        [status] = service.run_once()
    assert not status.ok and code in (status.last_error or "")
    assert values(sqlite_engine) == {"k": "v"}
    with Stubber(client) as stub:
        stub.add_client_error("list_secrets", service_error_code=code, service_message="no")
        with pytest.raises(SourceError) as info:
            PrefixSecretsSource(client, name_prefix="x/").fetch(None)
    assert info.value.kind == code


def test_endpoint_outage_then_recovery(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.moto_server import DUMMY_CREDENTIALS, secretsmanager_client

    for key, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    server = MotoProcess()
    server.start()
    try:
        secretsmanager_client(server.url).create_secret(
            Name=SECRET, SecretString=json.dumps({"k": "before"})
        )
        settings = get_settings().model_copy(deep=True)
        settings.variables.sync_sources = Settings.model_validate(
            {
                "variables": {
                    "sync_sources": [
                        {
                            "kind": "aws-secrets-manager",
                            "secret_id": SECRET,
                            "endpoint_url": server.url,
                        }
                    ]
                }
            }
        ).variables.sync_sources
        service = SyncService(settings, engine)
        assert service.run_once()[0].ok
        server.stop()
        [status] = service.run_once()
        assert not status.ok and "Could not connect" in (status.last_error or "")
        assert values(engine) == {"k": "before"}
        server.start()  # moto forgets everything: the secret comes back as a new version
        secretsmanager_client(server.url).create_secret(
            Name=SECRET, SecretString=json.dumps({"k": "after"})
        )
        [status] = service.run_once()
        assert status.ok and values(engine) == {"k": "after"}
    finally:
        server.stop()


def test_sources_from_the_environment(
    moto: MotoServer, engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    aws = moto.client()
    aws.create_secret(Name=SECRET, SecretString=json.dumps({"from_json": "1"}))
    aws.create_secret(Name="ketch/variables/from_prefix", SecretString="2")
    mounted = tmp_path / "variables.json"
    mounted.write_text(json.dumps({"from_file": "3"}))
    monkeypatch.setenv(
        "KETCH__VARIABLES__SYNC_SOURCES",
        json.dumps(
            [
                {
                    "kind": "aws-secrets-manager",
                    "secret_id": SECRET,
                    "region": REGION,
                    "endpoint_url": moto.url,
                },
                {
                    "kind": "aws-secrets-manager",
                    "name_prefix": "ketch/variables/",
                    "endpoint_url": moto.url,
                },
                {"kind": "file", "path": str(mounted)},
            ]
        ),
    )
    get_settings.cache_clear()
    statuses = run_sync_once(get_settings(), engine)
    assert [s.ok for s in statuses] == [True, True, True]
    assert values(engine) == {"from_json": "1", "from_prefix": "2", "from_file": "3"}
    with Session(engine) as session:
        assert {s.source_id for s in sync_status(session)} == {
            f"aws-secrets-manager:{SECRET}",
            "aws-secrets-manager:prefix=ketch/variables/",
            f"file:{mounted}",
        }


def test_unchanged_answer_is_cheap(moto: MotoServer) -> None:
    aws = moto.client()
    version = aws.create_secret(Name=SECRET, SecretString="{}")["VersionId"]
    assert SecretJsonSource(moto.client(), SECRET).fetch(version) == Unchanged(version)


SYNC_DAG = """
import os
from datetime import datetime, timezone

from ketch import Variable, dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
def read_synced_variable():
    @task
    def read():
        cfg = Variable.get("pipeline", deserialize_json=True)
        with open(os.environ["SYNC_OUT"], "a") as f:
            f.write(Variable.get("greeting") + " " + str(cfg["batch"]) + "\\n")

    read()


read_synced_variable()
"""


def test_standalone_syncs_and_a_task_reads_the_value(
    moto: MotoServer, db_url: str, ketch_home: Any, tmp_path: Any
) -> None:
    """A real `ketch standalone` syncs a secret on its thread; a real try reads it."""
    from tests.support.ketch_process import Api, KetchEnv, running, wait_for

    aws = moto.client()
    aws.create_secret(
        Name=SECRET, SecretString=json.dumps({"greeting": "hello", "pipeline": {"batch": 1}})
    )
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "read_synced_variable.py").write_text(SYNC_DAG)
    out = tmp_path / "out.txt"
    sources = [{"kind": "aws-secrets-manager", "secret_id": SECRET, "endpoint_url": moto.url}]
    env = KetchEnv(
        home=ketch_home,
        db_url=db_url,
        dags_folder=dags,
        extra={
            "KETCH__VARIABLES__SYNC_SOURCES": json.dumps(sources),
            "KETCH__VARIABLES__SYNC_INTERVAL": "0.2",
            "SYNC_OUT": str(out),
        },
    )
    api = Api(env.base_url)

    def synced_version() -> str | None:
        [source] = api.http.get("/api/v1/variables/syncStatus").json()["sources"]
        return source["version"] if source["ok"] else None

    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        first = wait_for(synced_version, 30, 0.05, "first sync")
        wait_for(lambda: api.dag("read_synced_variable"), 30, 0.05, "DAG parsed")
        run = api.trigger("read_synced_variable")
        assert (
            api.wait_run_finished("read_synced_variable", run["dag_run_id"], 60)["state"]
            == "success"
        )
        assert out.read_text() == "hello 1\n"

        aws.put_secret_value(
            SecretId=SECRET,
            SecretString=json.dumps({"greeting": "bonjour", "pipeline": {"batch": 2}}),
        )
        wait_for(lambda: (synced_version() or first) != first, 30, 0.05, "second sync")
        run = api.trigger("read_synced_variable")
        assert (
            api.wait_run_finished("read_synced_variable", run["dag_run_id"], 60)["state"]
            == "success"
        )
        assert out.read_text() == "hello 1\nbonjour 2\n"
        metrics = api.http.get("/metrics").text
        assert 'ketch_variable_sync_runs_total{result="changed"' in metrics


def test_no_region_is_a_source_error(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from ketch.config import AwsSecretsManagerSource
    from ketch.variables.sources import build_source

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    for config in (
        AwsSecretsManagerSource(kind="aws-secrets-manager", secret_id=SECRET),
        AwsSecretsManagerSource(kind="aws-secrets-manager", name_prefix="x/"),
    ):
        with pytest.raises(SourceError) as info:
            build_source(config).fetch(None)
        assert str(info.value).startswith("cannot create the Secrets Manager client")
