"""Sensors with Airflow 3's semantics (``airflow.sdk.bases.sensor``): poke until true,
the poke's return value, timeout (no retry) or soft_fail (skip), never_fail and
silent_fail, exponential backoff with max_wait, and the file sensor on real files."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ketch import DAG
from ketch.authoring.context import build_context
from ketch.authoring.sensors import BaseSensor, FileSensor, PokeReturnValue, PythonSensor
from ketch.exceptions import (
    AirflowSensorTimeout,
    FailTask,
    SensorTimeout,
    SkipTask,
)
from tests.unit.test_authoring import PAYLOAD


def run(sensor: BaseSensor) -> Any:
    return sensor.execute(build_context(dict(PAYLOAD)), lambda *_: None).return_value


def make(cls: type[BaseSensor] = PythonSensor, **kwargs: Any) -> Any:
    with DAG("sensing", schedule=None):
        return cls(task_id="wait", **kwargs)


def test_pokes_until_true_and_returns_the_poke_value() -> None:
    calls: list[float] = []

    def ready() -> PokeReturnValue:
        calls.append(time.monotonic())
        return PokeReturnValue(len(calls) == 3, xcom_value={"rows": 42})

    sensor = make(python_callable=ready, poke_interval=0.05)
    assert run(sensor) == {"rows": 42}
    assert len(calls) == 3
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(calls))


def test_a_plain_true_returns_none_and_the_context_is_injected() -> None:
    seen: dict[str, Any] = {}

    def ready(params: dict[str, Any], **context: Any) -> bool:
        seen["params"] = params
        seen["task_id"] = context["task_id"]
        return True

    assert run(make(python_callable=ready, poke_interval=0)) is None
    assert seen["task_id"] == "wait"


def test_timeout_fails_without_retry_and_says_so() -> None:
    sensor = make(python_callable=lambda: False, poke_interval=0.02, timeout=0.1)
    with pytest.raises(SensorTimeout, match="Sensor has timed out") as raised:
        run(sensor)
    assert isinstance(raised.value, FailTask)  # FailTask: the try fails without its retries
    assert AirflowSensorTimeout is SensorTimeout


def test_soft_fail_skips_on_timeout_and_on_fail_exceptions() -> None:
    with pytest.raises(SkipTask, match="timed out"):
        run(make(python_callable=lambda: False, poke_interval=0.02, timeout=0.05, soft_fail=True))

    def fails() -> bool:
        raise FailTask("the bucket is gone")

    with pytest.raises(SkipTask, match="soft_fail"):
        run(make(python_callable=fails, soft_fail=True))


def test_soft_fail_does_not_hide_an_ordinary_error() -> None:
    def broken() -> bool:
        raise KeyError("no such key")

    with pytest.raises(KeyError):
        run(make(python_callable=broken, soft_fail=True))


def test_never_fail_skips_on_any_error_and_silent_fail_pokes_again() -> None:
    def broken() -> bool:
        raise RuntimeError("flaky")

    with pytest.raises(SkipTask, match="never_fail"):
        run(make(python_callable=broken, never_fail=True))
    calls = []

    def flaky() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("flaky")
        return True

    run(make(python_callable=flaky, poke_interval=0, silent_fail=True))
    assert len(calls) == 3


def test_bad_arguments_are_refused_at_parse_time() -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        make(python_callable=bool, soft_fail=True, never_fail=True)
    with pytest.raises(ValueError, match="mode must be one of"):
        make(python_callable=bool, mode="defer")
    with pytest.raises(ValueError, match="poke_interval"):
        make(python_callable=bool, poke_interval=-1)
    sensor = make(python_callable=bool, poke_interval=timedelta(minutes=2))
    assert sensor.poke_interval == 120
    assert sensor.timeout == 7 * 24 * 3600  # Airflow's [sensors] default_timeout


def test_exponential_backoff_grows_with_jitter_and_is_capped() -> None:
    sensor = make(python_callable=bool, poke_interval=10, exponential_backoff=True, timeout=3600)
    intervals = [sensor.next_poke_interval(1.0, lambda: 0.0, n) for n in range(1, 8)]
    # Airflow: min_backoff = max(int(10 * 2**(n-2)), 1); interval in [min, 2*min)
    for n, interval in enumerate(intervals, start=1):
        low = max(int(10 * 2 ** (n - 2)), 1)
        assert low <= interval < 2 * low, (n, interval)
    capped = make(
        python_callable=bool, poke_interval=10, exponential_backoff=True, max_wait=30, timeout=3600
    )
    assert capped.next_poke_interval(1.0, lambda: 0.0, 7) == 30
    near_end = make(python_callable=bool, poke_interval=10, exponential_backoff=True, timeout=100)
    assert near_end.next_poke_interval(1.0, lambda: 95.0, 7) == 5


def test_a_file_sensor_waits_for_a_file_a_glob_or_a_filled_folder(tmp_path: Path) -> None:
    target = tmp_path / "incoming" / "data.csv"
    sensor = make(FileSensor, filepath=str(target), poke_interval=0.02, timeout=5)

    def arrive() -> None:
        time.sleep(0.1)
        target.parent.mkdir()
        target.write_text("a,b\n")

    writer = threading.Thread(target=arrive)
    writer.start()
    started = time.monotonic()
    run(sensor)
    writer.join()
    assert time.monotonic() - started >= 0.09
    assert make(FileSensor, filepath=str(tmp_path / "incoming" / "*.csv"), timeout=0).poke({})
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not make(FileSensor, filepath=str(empty), timeout=0).poke({})
    (empty / "deep").mkdir()
    (empty / "deep" / "f").write_text("x")
    assert make(FileSensor, filepath=str(empty), timeout=0).poke({})


# ----- end to end on the local executor --------------------------------------------------

SENSOR_DAG = """
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ketch import DAG, FileSensor, PokeReturnValue, task

FLAG = Path({flag!r})

with DAG("e2e_sensors", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)):
    @task
    def drop_later():
        import threading, time

        def later():
            time.sleep(0.5)
            FLAG.write_text("ready")

        threading.Thread(target=later).start()
        time.sleep(0.6)

    @task.sensor(poke_interval=0.1, timeout=30)
    def wait_for_flag():
        return PokeReturnValue(FLAG.exists(), xcom_value=FLAG.read_text() if FLAG.exists() else None)

    @task
    def use(value):
        print("got", value)
        return value.upper()

    files = FileSensor(task_id="files", filepath=str(FLAG.parent / "*.flag"), poke_interval=0.1)
    drop_later() >> [wait_for_flag_value := wait_for_flag(), files]
    use(wait_for_flag_value)

    @task.sensor(poke_interval=0.05, timeout=0.3, soft_fail=True)
    def gives_up_softly():
        return False

    @task.sensor(poke_interval=0.05, timeout=0.3, retries=2, retry_delay=timedelta(seconds=0))
    def gives_up():
        return False

    gives_up_softly()
    gives_up()
"""


def test_sensors_end_to_end_on_the_local_executor(ketch_home: Path, tmp_path: Path) -> None:
    from tests.support.ketch_process import standalone_with_dag

    flag = tmp_path / "signal" / "go.flag"
    flag.parent.mkdir()
    source = SENSOR_DAG.format(flag=str(flag))
    xcom = "/api/v1/dags/e2e_sensors/dagRuns/{}/taskInstances/use/xcomEntries/return_value"
    with standalone_with_dag(ketch_home, tmp_path, "sensors.py", source, "e2e_sensors") as api:
        run_id = api.trigger("e2e_sensors")["dag_run_id"]
        run = api.wait_run_finished("e2e_sensors", run_id, 120)
        tis = api.task_instances("e2e_sensors", run_id)
        value = api.http.get(xcom.format(run_id))
    states = {t: ti["state"] for t, ti in tis.items()}
    assert states == {
        "drop_later": "success",
        "wait_for_flag": "success",
        "files": "success",
        "use": "success",
        "gives_up_softly": "skipped",
        "gives_up": "failed",
    }, tis
    assert run["state"] == "failed"
    assert value.json()["value"] == "READY"
    assert tis["gives_up"]["try_number"] == 1, "a sensor timeout uses no retry"
