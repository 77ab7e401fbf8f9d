"""Timetables: when scheduled runs happen and which data interval each covers.

A port of Airflow 3.3's ``airflow.timetables`` (trigger.py, interval.py,
simple.py, _cron.py, _delta.py) to plain aware datetimes. The scheduler passes
``now`` explicitly instead of reading the clock, so every answer is reproducible.

Which timetable a ``schedule`` argument becomes (Airflow 3 defaults):

- ``None`` -> NullTimetable; ``"@once"`` -> OnceTimetable;
- a cron string or preset -> CronTriggerTimetable, or CronDataIntervalTimetable
  when ``[scheduler] create_cron_data_intervals``;
- a timedelta -> DeltaTriggerTimetable, or DeltaDataIntervalTimetable when
  ``[scheduler] create_delta_data_intervals``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from ketch.exceptions import DagDefinitionError

if TYPE_CHECKING:
    from ketch.serialization import SerializedSchedule

CRON_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}


@dataclass(frozen=True)
class DataInterval:
    start: datetime
    end: datetime

    @classmethod
    def exact(cls, at: datetime) -> DataInterval:
        return cls(at, at)


@dataclass(frozen=True)
class DagRunInfo:
    """A run to create: due at ``run_after``, covering ``data_interval``."""

    run_after: datetime
    data_interval: DataInterval
    logical_date: datetime

    @classmethod
    def interval(cls, start: datetime, end: datetime) -> DagRunInfo:
        return cls(run_after=end, data_interval=DataInterval(start, end), logical_date=start)

    @classmethod
    def exact(cls, at: datetime) -> DagRunInfo:
        return cls.interval(at, at)


class Timetable(Protocol):
    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        start_date: datetime | None,
        end_date: datetime | None,
        catchup: bool,
        now: datetime,
    ) -> DagRunInfo | None: ...

    def infer_manual_data_interval(self, run_after: datetime) -> DataInterval | None: ...


# ----- the trivial ones (simple.py) --------------------------------------------------


class NullTimetable:
    """``schedule=None``: manual runs only."""

    def next_dagrun_info(self, **_: Any) -> DagRunInfo | None:
        return None

    def infer_manual_data_interval(self, run_after: datetime) -> DataInterval | None:
        return DataInterval.exact(run_after)


class OnceTimetable:
    """``@once``: one run at start_date (or at once), whatever catchup says."""

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        start_date: datetime | None,
        end_date: datetime | None,
        catchup: bool,
        now: datetime,
    ) -> DagRunInfo | None:
        if last_automated_data_interval is not None:
            return None
        run_after = start_date or now
        if end_date is not None and run_after > end_date:
            return None
        return DagRunInfo.exact(run_after)

    def infer_manual_data_interval(self, run_after: datetime) -> DataInterval | None:
        return DataInterval.exact(run_after)


# ----- schedule arithmetic (_cron.py, _delta.py) --------------------------------------


def _make_aware(naive: datetime, tz: tzinfo) -> datetime:
    """Pendulum's ``convert`` with fold=1, as Airflow's make_aware does.

    A wall time skipped by a DST jump moves forward by the jump; a repeated wall
    time resolves to its second occurrence.
    """
    value = naive.replace(fold=1)
    before = value.replace(fold=0, tzinfo=tz).utcoffset()
    after = value.replace(tzinfo=tz).utcoffset()
    if before is not None and after is not None and after > before:
        value = value + (after - before)
    return value.replace(tzinfo=tz)


class _CronSchedule:
    """Next/previous cron ticks in a timezone, with Airflow's DST fix."""

    def __init__(self, expression: str, timezone: str) -> None:
        self.expression = CRON_PRESETS.get(expression, expression)
        self.tz = ZoneInfo(timezone)
        from croniter import croniter

        # The "fold hour" fix applies to schedules that run at least hourly.
        self._every_hour = croniter(self.expression).expanded[1] == ["*"]

    def _step(self, current: datetime, forward: bool) -> datetime:
        from croniter import croniter

        naive = current.astimezone(self.tz).replace(tzinfo=None)
        cron = croniter(self.expression, start_time=naive)
        scheduled: datetime = cron.get_next(datetime) if forward else cron.get_prev(datetime)
        if not self._every_hour:
            return _make_aware(scheduled, self.tz).astimezone(UTC)
        # Absolute arithmetic keeps hourly schedules running through a repeated hour.
        return current.astimezone(UTC) + (scheduled - naive)

    def get_next(self, current: datetime) -> datetime:
        return self._step(current, True)

    def get_prev(self, current: datetime) -> datetime:
        return self._step(current, False)

    def align_to_next(self, current: datetime) -> datetime:
        next_time = self.get_next(current)
        return next_time if self.get_prev(next_time) != current else current

    def align_to_prev(self, current: datetime) -> datetime:
        prev_time = self.get_prev(current)
        return prev_time if self.get_next(prev_time) != current else current


class _DeltaSchedule:
    def __init__(self, delta: timedelta) -> None:
        self.delta = delta

    def get_next(self, current: datetime) -> datetime:
        return (current + self.delta).astimezone(UTC)

    def get_prev(self, current: datetime) -> datetime:
        return (current - self.delta).astimezone(UTC)

    def align_to_next(self, current: datetime) -> datetime:
        return current

    def align_to_prev(self, current: datetime) -> datetime:
        return current


_Schedule = _CronSchedule | _DeltaSchedule


# ----- trigger timetables (trigger.py) --------------------------------------------------


class TriggerTimetable:
    """CronTriggerTimetable / DeltaTriggerTimetable: a run at each tick, interval ``[tick, tick]``."""

    def __init__(self, schedule: _Schedule) -> None:
        self.schedule = schedule
        self.interval = timedelta(0)

    def _calc_first_run(self, now: datetime) -> datetime:
        s = self.schedule
        if isinstance(s, _DeltaSchedule):
            return s.align_to_prev(now)
        # run_immediately=False (Airflow's default): the past tick if within 10% of the gap.
        past, nxt = s.align_to_prev(now), s.align_to_next(now)
        buffer = max((nxt - past) / 10, timedelta(minutes=5))
        return past if now - past <= buffer else nxt

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        start_date: datetime | None,
        end_date: datetime | None,
        catchup: bool,
        now: datetime,
    ) -> DagRunInfo | None:
        s, last = self.schedule, last_automated_data_interval
        if catchup:
            if last is not None:
                next_start = s.get_next(last.end)
            elif start_date is None:
                next_start = self._calc_first_run(now)
            else:
                next_start = s.align_to_next(start_date)
        else:
            candidates = [s.align_to_prev(now)]
            if last is not None:
                candidates.append(s.get_next(last.end))
            elif start_date is None:
                candidates.append(self._calc_first_run(now))
            if start_date is not None:
                candidates.append(s.align_to_next(start_date))
            next_start = max(candidates)
        if end_date is not None and end_date < next_start:
            return None
        return DagRunInfo.interval(next_start - self.interval, next_start)

    def infer_manual_data_interval(self, run_after: datetime) -> DataInterval | None:
        return DataInterval(run_after - self.interval, run_after)


# ----- data interval timetables (interval.py) -------------------------------------------


class DataIntervalTimetable:
    """CronDataIntervalTimetable / DeltaDataIntervalTimetable: a run covers ``[tick, next tick)``
    and is due at the interval's end."""

    def __init__(self, schedule: _Schedule) -> None:
        self.schedule = schedule

    def _skip_to_latest(self, earliest: datetime | None, now: datetime) -> datetime:
        s = self.schedule
        if isinstance(s, _DeltaSchedule):
            seconds = s.delta.total_seconds()
            stamp = now.timestamp()
            rounded = datetime.fromtimestamp(stamp - stamp % seconds, tz=UTC)
            new_start = s.get_prev(rounded)
            return new_start if earliest is None else max(new_start, earliest)
        last_start = s.get_prev(now)
        next_start = s.get_next(last_start)
        new_start = last_start if next_start == now else s.get_prev(last_start)
        return new_start if earliest is None else max(new_start, s.align_to_next(earliest))

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        start_date: datetime | None,
        end_date: datetime | None,
        catchup: bool,
        now: datetime,
    ) -> DagRunInfo | None:
        s = self.schedule
        earliest = start_date
        if not catchup:
            earliest = self._skip_to_latest(earliest, now)
        elif earliest is not None:
            earliest = s.align_to_next(earliest)
        if last_automated_data_interval is None:
            if earliest is None:
                return None
            start = earliest
        else:
            aligned_end = s.align_to_prev(last_automated_data_interval.end)
            start = aligned_end if earliest is None else max(aligned_end, earliest)
        if end_date is not None and start > end_date:
            return None
        return DagRunInfo.interval(start, s.get_next(start))

    def infer_manual_data_interval(self, run_after: datetime) -> DataInterval | None:
        s = self.schedule
        if isinstance(s, _DeltaSchedule):
            return DataInterval(s.get_prev(run_after), run_after)
        # The last complete period before run_after.
        end = s.align_to_prev(run_after)
        return DataInterval(s.get_prev(end), end)


# ----- schedule argument <-> serialized form ----------------------------------------------


def validate_cron(expression: str) -> str:
    """The expression with presets expanded; DagDefinitionError if croniter rejects it."""
    from croniter import croniter

    expanded = CRON_PRESETS.get(expression, expression)
    if expanded.startswith("@") or not croniter.is_valid(expanded):
        raise DagDefinitionError(
            f"invalid schedule {expression!r}: not a cron expression or preset"
        )
    return expanded


def serialize_schedule(
    schedule: str | timedelta | None,
    *,
    timezone: str,
    create_cron_data_intervals: bool,
    create_delta_data_intervals: bool,
) -> SerializedSchedule:
    """The ``schedule`` DAG argument as stored (which Airflow timetable it behaves as)."""
    from ketch.serialization import SerializedSchedule

    if schedule is None:
        return SerializedSchedule(kind="none", summary="None")
    if schedule == "@once":
        return SerializedSchedule(kind="once", summary="@once")
    if isinstance(schedule, timedelta):
        return SerializedSchedule(
            kind="delta_interval" if create_delta_data_intervals else "delta_trigger",
            delta_seconds=schedule.total_seconds(),
            summary=str(schedule),
        )
    if isinstance(schedule, str):
        expression = validate_cron(schedule)
        return SerializedSchedule(
            kind="cron_interval" if create_cron_data_intervals else "cron_trigger",
            expression=expression,
            timezone=timezone,
            summary=schedule,
        )
    raise DagDefinitionError(f"invalid schedule {schedule!r}")


def timetable_for(schedule: SerializedSchedule) -> Timetable:
    """The timetable a serialized schedule behaves as."""
    kind = schedule.kind
    if kind == "none":
        return NullTimetable()
    if kind == "once":
        return OnceTimetable()
    if kind in ("cron_trigger", "cron_interval"):
        cron = _CronSchedule(schedule.expression or "", schedule.timezone)
        return TriggerTimetable(cron) if kind == "cron_trigger" else DataIntervalTimetable(cron)
    delta = _DeltaSchedule(timedelta(seconds=schedule.delta_seconds or 0))
    return TriggerTimetable(delta) if kind == "delta_trigger" else DataIntervalTimetable(delta)
