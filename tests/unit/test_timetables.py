"""Timetables against values worked out by hand from Airflow 3.3's timetables code
(trigger.py, interval.py, simple.py, _cron.py, _delta.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ketch.authoring.timetables import (
    DagRunInfo,
    DataInterval,
    serialize_schedule,
    timetable_for,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


def tt(schedule: Any, tz: str = "UTC", *, intervals: bool = False) -> Any:
    return timetable_for(
        serialize_schedule(
            schedule,
            timezone=tz,
            create_cron_data_intervals=intervals,
            create_delta_data_intervals=intervals,
        )
    )


def nxt(
    t: Any,
    *,
    last: DataInterval | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    catchup: bool = True,
    now: datetime = utc(2024, 3, 5, 10),
) -> DagRunInfo | None:
    return t.next_dagrun_info(
        last_automated_data_interval=last, start_date=start, end_date=end, catchup=catchup, now=now
    )


def test_kinds_from_schedule_argument() -> None:
    def kind(schedule: Any, intervals: bool = False) -> str:
        return serialize_schedule(
            schedule,
            timezone="UTC",
            create_cron_data_intervals=intervals,
            create_delta_data_intervals=intervals,
        ).kind

    assert kind(None) == "none"
    assert kind("@once") == "once"
    assert kind("@daily") == "cron_trigger"
    assert kind("*/5 * * * *", True) == "cron_interval"
    assert kind(timedelta(hours=1)) == "delta_trigger"
    assert kind(timedelta(hours=1), True) == "delta_interval"


def test_cron_trigger_catchup() -> None:
    t = tt("@daily")
    first = nxt(t, start=utc(2024, 1, 1))
    assert first == DagRunInfo(
        utc(2024, 1, 1), DataInterval(utc(2024, 1, 1), utc(2024, 1, 1)), utc(2024, 1, 1)
    )
    second = nxt(t, start=utc(2024, 1, 1), last=first.data_interval if first else None)
    assert second is not None and second.run_after == utc(2024, 1, 2)
    # A start_date between ticks aligns to the next tick.
    aligned = nxt(t, start=utc(2024, 1, 1, 5))
    assert aligned is not None and aligned.run_after == utc(2024, 1, 2)


def test_cron_trigger_no_catchup_runs_latest_tick_only() -> None:
    t = tt("@daily")
    info = nxt(t, start=utc(2024, 1, 1), catchup=False)
    assert info is not None and info.run_after == info.logical_date == utc(2024, 3, 5)
    after = nxt(
        t, start=utc(2024, 1, 1), catchup=False, last=DataInterval(utc(2024, 3, 5), utc(2024, 3, 5))
    )
    assert after is not None and after.run_after == utc(2024, 3, 6)
    # An old last run does not cause a backfill either.
    old = nxt(
        t, start=utc(2024, 1, 1), catchup=False, last=DataInterval(utc(2024, 1, 3), utc(2024, 1, 3))
    )
    assert old is not None and old.run_after == utc(2024, 3, 5)


def test_cron_trigger_without_start_date_uses_ten_percent_rule() -> None:
    t = tt("@daily")
    soon = nxt(t, now=utc(2024, 3, 5, 0, 3))
    assert soon is not None and soon.run_after == utc(2024, 3, 5)
    later = nxt(t, now=utc(2024, 3, 5, 10))
    assert later is not None and later.run_after == utc(2024, 3, 6)


def test_end_date_stops_runs() -> None:
    t = tt("@daily")
    last = DataInterval(utc(2024, 1, 2), utc(2024, 1, 2))
    assert nxt(t, start=utc(2024, 1, 1), end=utc(2024, 1, 2, 12), last=last) is None
    interval = tt("@daily", intervals=True)
    last = DataInterval(utc(2024, 1, 1), utc(2024, 1, 2))
    assert nxt(interval, start=utc(2024, 1, 1), end=utc(2024, 1, 1, 12), last=last) is None
    info = nxt(interval, start=utc(2024, 1, 1), end=utc(2024, 1, 2), last=last)
    assert info is not None and info.data_interval == DataInterval(utc(2024, 1, 2), utc(2024, 1, 3))


def test_cron_data_interval() -> None:
    t = tt("@daily", intervals=True)
    first = nxt(t, start=utc(2024, 1, 1))
    assert first == DagRunInfo(
        utc(2024, 1, 2), DataInterval(utc(2024, 1, 1), utc(2024, 1, 2)), utc(2024, 1, 1)
    )
    latest = nxt(t, start=utc(2024, 1, 1), catchup=False)
    assert latest is not None
    assert latest.data_interval == DataInterval(utc(2024, 3, 4), utc(2024, 3, 5))
    assert latest.run_after == utc(2024, 3, 5)
    assert nxt(t, catchup=True) is None  # no start_date and catchup: nothing to schedule


def test_delta_data_interval() -> None:
    t = tt(timedelta(days=1), intervals=True)
    first = nxt(t, start=utc(2024, 1, 1, 6))
    assert first is not None and first.data_interval == DataInterval(
        utc(2024, 1, 1, 6), utc(2024, 1, 2, 6)
    )
    latest = nxt(t, start=utc(2024, 1, 1, 6), catchup=False)
    assert latest is not None and latest.data_interval == DataInterval(
        utc(2024, 3, 4), utc(2024, 3, 5)
    )


def test_delta_trigger() -> None:
    t = tt(timedelta(hours=1))
    first = nxt(t, start=utc(2024, 1, 1))
    assert first is not None and first.run_after == first.logical_date == utc(2024, 1, 1)
    second = nxt(t, start=utc(2024, 1, 1), last=DataInterval(utc(2024, 1, 1), utc(2024, 1, 1)))
    assert second is not None and second.run_after == utc(2024, 1, 1, 1)
    now = utc(2024, 3, 5, 10, 17)
    latest = nxt(t, start=utc(2024, 1, 1), catchup=False, now=now)
    assert latest is not None and latest.run_after == now


def test_once_and_none() -> None:
    once = tt("@once")
    info = nxt(once, start=utc(2024, 1, 1), catchup=False)
    assert info is not None and info.run_after == utc(2024, 1, 1)
    assert nxt(once, start=utc(2024, 1, 1), last=info.data_interval) is None
    assert nxt(once, now=utc(2024, 3, 5)) == DagRunInfo.exact(utc(2024, 3, 5))
    assert nxt(tt(None), start=utc(2024, 1, 1)) is None


@pytest.mark.parametrize(
    ("schedule", "intervals", "expected"),
    [
        ("@daily", False, (utc(2024, 3, 5, 1), utc(2024, 3, 5, 1))),
        ("@daily", True, (utc(2024, 3, 4), utc(2024, 3, 5))),
        (timedelta(hours=2), True, (utc(2024, 3, 4, 23), utc(2024, 3, 5, 1))),
        (timedelta(hours=2), False, (utc(2024, 3, 5, 1), utc(2024, 3, 5, 1))),
        (None, False, (utc(2024, 3, 5, 1), utc(2024, 3, 5, 1))),
        ("@once", False, (utc(2024, 3, 5, 1), utc(2024, 3, 5, 1))),
    ],
)
def test_manual_data_interval(
    schedule: Any, intervals: bool, expected: tuple[datetime, datetime]
) -> None:
    interval = tt(schedule, intervals=intervals).infer_manual_data_interval(
        run_after=utc(2024, 3, 5, 1)
    )
    assert interval == DataInterval(*expected)


def test_cron_in_timezone_across_spring_forward() -> None:
    """A daily tick at midnight New York time is 05:00 UTC in winter and 04:00 UTC in summer."""
    t = tt("0 0 * * *", "America/New_York")
    info = nxt(
        t, start=utc(2024, 3, 9, 5), last=DataInterval(utc(2024, 3, 9, 5), utc(2024, 3, 9, 5))
    )
    assert info is not None and info.run_after == utc(2024, 3, 10, 5)
    info = nxt(t, start=utc(2024, 3, 9, 5), last=info.data_interval)
    assert info is not None and info.run_after == utc(2024, 3, 11, 4)


def test_cron_skipped_wall_time_moves_forward() -> None:
    """02:00 does not exist in Zurich on 2023-03-26; Airflow runs at 03:00 local (01:00 UTC)."""
    t = tt("0 2 * * *", "Europe/Zurich")
    last = DataInterval(utc(2023, 3, 25, 1), utc(2023, 3, 25, 1))
    info = nxt(t, last=last)
    assert info is not None and info.run_after == utc(2023, 3, 26, 1)
    info = nxt(t, last=info.data_interval)
    assert info is not None and info.run_after == utc(2023, 3, 27, 0)


def test_hourly_cron_runs_through_the_repeated_hour() -> None:
    """On 2023-10-29 Zurich repeats 02:00-03:00; ``30 * * * *`` runs at both 02:30s."""
    t = tt("30 * * * *", "Europe/Zurich")
    first = datetime(2023, 10, 29, 2, 30, tzinfo=ZoneInfo("Europe/Zurich")).astimezone(UTC)
    assert first == utc(2023, 10, 29, 0, 30)
    info = nxt(t, last=DataInterval(first, first))
    assert info is not None and info.run_after == utc(2023, 10, 29, 1, 30)
    info = nxt(t, last=info.data_interval)
    assert info is not None and info.run_after == utc(2023, 10, 29, 2, 30)


def test_dag_timezone_comes_from_start_date(tmp_path: Any) -> None:
    from ketch import DAG
    from ketch.authoring.serialize import serialize_dag

    with DAG(
        "tz", schedule="@daily", start_date=datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Paris"))
    ) as d:
        pass
    assert serialize_dag(d, tmp_path).schedule.timezone == "Europe/Paris"
    with DAG("naive", schedule="@daily", start_date=datetime(2024, 1, 1)) as d2:
        pass
    s = serialize_dag(d2, tmp_path)
    assert s.schedule.timezone == "UTC" and s.start_date == utc(2024, 1, 1)
