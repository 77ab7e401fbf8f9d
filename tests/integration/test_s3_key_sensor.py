"""``S3KeySensor`` against moto in server mode (a real HTTP S3 API): exact keys, lists of keys,
``s3://`` URLs, wildcards, ``check_fn``; then end to end in reschedule mode with a ketch
connection of type aws naming moto's endpoint (the try itself has no AWS credentials)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ketch import DAG, S3KeySensor
from ketch.authoring.context import build_context
from ketch.exceptions import SensorTimeout
from tests.support.ketch_process import KetchEnv, standalone_with_dag, wait_for
from tests.support.moto_server import REGION, MotoServer, create_bucket
from tests.unit.test_authoring import PAYLOAD

BUCKET = "landing"


def found(**kwargs: Any) -> bool:
    """One poke (timeout 0): True when the sensor succeeds, False when it times out."""
    with DAG("s3", schedule=None):
        sensor = S3KeySensor(task_id="wait", poke_interval=0, timeout=0, aws_conn_id=None, **kwargs)
    try:
        sensor.execute(build_context(dict(PAYLOAD)), print)
    except SensorTimeout:
        return False
    return True


@pytest.fixture
def s3(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)  # boto3's chain honours it
    client = moto.s3()
    create_bucket(client, BUCKET)
    return client


def test_exact_keys_lists_and_urls(s3: Any) -> None:
    assert not found(bucket_key="in/a.csv", bucket_name=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="in/a.csv", Body=b"x")
    assert found(bucket_key="in/a.csv", bucket_name=BUCKET)
    assert found(bucket_key=f"s3://{BUCKET}/in/a.csv")
    assert not found(bucket_key=["in/a.csv", "in/b.csv"], bucket_name=BUCKET)  # all must exist
    s3.put_object(Bucket=BUCKET, Key="in/b.csv", Body=b"yy")
    assert found(bucket_key=["in/a.csv", "in/b.csv"], bucket_name=BUCKET)
    assert not found(bucket_key="in/a.cs", bucket_name=BUCKET)  # a prefix is not a key


def test_wildcards_and_check_fn(s3: Any) -> None:
    assert not found(bucket_key="in/*.csv", bucket_name=BUCKET, wildcard_match=True)
    s3.put_object(Bucket=BUCKET, Key="in/deep/part-1.csv", Body=b"12345")
    assert found(bucket_key="in/*.csv", bucket_name=BUCKET, wildcard_match=True)
    assert not found(bucket_key="in/part-?.csv", bucket_name=BUCKET, wildcard_match=True)
    assert found(bucket_key=f"s3://{BUCKET}/in/deep/part-[0-9].csv", wildcard_match=True)
    assert not found(bucket_key="in/*.csv", bucket_name=BUCKET)  # no wildcard_match: literal

    def big(files: list[dict[str, Any]]) -> bool:
        return all(f["Size"] >= 5 for f in files)

    assert found(bucket_key="in/*.csv", bucket_name=BUCKET, wildcard_match=True, check_fn=big)
    s3.put_object(Bucket=BUCKET, Key="in/small.csv", Body=b"1")
    assert not found(bucket_key="in/*.csv", bucket_name=BUCKET, wildcard_match=True, check_fn=big)


def test_a_key_without_a_bucket_is_one_clear_error(s3: Any) -> None:
    with pytest.raises(ValueError, match="not an s3:// URL and no bucket_name is given"):
        found(bucket_key="in/a.csv")


S3_DAG = """
from datetime import datetime

from ketch import S3KeySensor, dag


@dag(schedule=None, start_date=datetime(2024, 1, 1), is_paused_upon_creation=False)
def e2e_s3():
    S3KeySensor(
        task_id="waits", bucket_key="s3://landing/in/{{ task.task_id }}/*.csv", wildcard_match=True,
        aws_conn_id="moto", mode="reschedule", poke_interval=0.5, timeout=120,
    )
    S3KeySensor(
        task_id="no_conn", bucket_key="s3://landing/x", aws_conn_id="nowhere",
        mode="reschedule", poke_interval=0.5, timeout=120,
    )


e2e_s3()
"""


def add_connection(home: Path, tmp_path: Path, moto: MotoServer) -> None:
    env = KetchEnv(home=home, db_url=f"sqlite:///{home / 'e2e.db'}", dags_folder=tmp_path / "dags")
    extra = json.dumps({"endpoint_url": moto.url, "region_name": REGION})
    args = ["connections", "add", "moto", "--conn-type", "aws", "--conn-login", "testing"]
    args += ["--conn-password", "testing", "--conn-extra", extra]
    done = subprocess.run(
        [sys.executable, "-m", "ketch", *args],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_s3_key_sensor_in_reschedule_mode_with_an_aws_connection(
    ketch_home: Path, tmp_path: Path, s3: Any, moto: MotoServer
) -> None:
    with standalone_with_dag(ketch_home, tmp_path, "s3.py", S3_DAG, "e2e_s3") as api:
        add_connection(ketch_home, tmp_path, moto)
        run = api.trigger("e2e_s3")
        run_id = run["dag_run_id"]

        def waiting() -> bool:
            tis = api.task_instances("e2e_s3", run_id)
            return tis["waits"]["state"] == "up_for_reschedule" and tis["waits"]["try_number"] >= 2

        wait_for(waiting, 120, 0.1, "the sensor to poke twice and wait")
        s3.put_object(Bucket=BUCKET, Key="in/waits/rows.csv", Body=b"a,b\n")
        api.wait_run_finished("e2e_s3", run_id, 120)
        tis = api.task_instances("e2e_s3", run_id)
    assert tis["waits"]["state"] == "success", tis["waits"]
    assert tis["no_conn"]["state"] == "failed"
    assert "nowhere" in tis["no_conn"]["error"], tis["no_conn"]["error"]


def test_airflows_path_names_the_same_sensor() -> None:
    from ketch.airflow_compat.table import resolve
    from ketch.exceptions import AirflowRescheduleException, RescheduleTask

    assert resolve("airflow.providers.amazon.aws.sensors.s3", "S3KeySensor") is S3KeySensor
    assert resolve("airflow.exceptions", "AirflowRescheduleException") is RescheduleTask
    assert AirflowRescheduleException is RescheduleTask
