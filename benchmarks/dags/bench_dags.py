"""DAGs for the benchmarks: no-op tasks, so the figures measure ketch, not the work."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from ketch import dag, task

START = datetime(2026, 1, 1, tzinfo=UTC)
SCALE_TASKS = int(os.environ.get("KETCH_BENCH_SCALE_TASKS", "10000"))


@task
def noop() -> None:
    return None


@task
def nap() -> None:
    import time

    time.sleep(float(os.environ.get("KETCH_BENCH_NAP_SECONDS", "0.3")))


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def chain_20() -> None:
    previous = None
    for i in range(20):
        current = noop.override(task_id=f"t{i:02d}")()
        if previous is not None:
            previous >> current
        previous = current


@dag(schedule=None, start_date=START, is_paused_upon_creation=False, max_active_tasks=64)
def fanout_200() -> None:
    join = noop.override(task_id="join")()
    for i in range(200):
        noop.override(task_id=f"t{i:03d}")() >> join


@dag(schedule=None, start_date=START, is_paused_upon_creation=False, max_active_tasks=64)
def fanout_1000() -> None:
    """1,000 plain parallel no-op tasks and a join: what mapped_1000 is compared with."""
    join = noop.override(task_id="join")()
    for i in range(1000):
        noop.override(task_id=f"t{i:04d}")() >> join


@task
def items() -> list[int]:
    return list(range(1000))


@task
def one(x: int) -> int:
    return x


@task
def reduce(values: list[int]) -> int:
    return sum(values)


@task
def pick(values: list[int], i: int) -> int:
    return values[i]


@dag(schedule=None, start_date=START, is_paused_upon_creation=False, max_active_tasks=64)
def fanout_1000_args() -> None:
    """mapped_1000 written without mapping: 1,000 plain tasks each taking the producer's
    value (so each try reads an upstream value and reports rendered arguments, as a mapped
    instance does), and a reduce of their values."""
    values = items()
    reduce([pick.override(task_id=f"t{i:04d}")(values, i) for i in range(1000)])


@dag(schedule=None, start_date=START, is_paused_upon_creation=False, max_active_tasks=64)
def mapped_1000() -> None:
    """A producer, a 1,000-way mapped task over its value, and a reduce of all 1,000."""
    reduce(one.expand(x=items()))


@dag(schedule=None, start_date=START, is_paused_upon_creation=False, max_active_tasks=64)
def scale_10k() -> None:
    for i in range(SCALE_TASKS):
        noop.override(task_id=f"t{i:05d}")()


@dag(schedule=None, start_date=START, is_paused_upon_creation=False, max_active_tasks=64)
def chains_10x20() -> None:
    """10 chains of 20 short naps: what the recovery benchmark kills the scheduler under."""
    for c in range(10):
        previous = None
        for i in range(20):
            current = nap.override(task_id=f"c{c}_t{i:02d}")()
            if previous is not None:
                previous >> current
            previous = current


chain_20()
chains_10x20()
fanout_200()
scale_10k()
fanout_1000()
fanout_1000_args()
mapped_1000()
