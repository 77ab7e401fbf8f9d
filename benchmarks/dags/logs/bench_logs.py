"""DAGs of the log benchmarks (``benchmarks/logs.py``); the run's conf sets durations.

Each task prints what the benchmark needs to measure in its own log: ``TICK i time``
lines (follow latency) and one ``BENCH_OVERHEAD {json}`` line (logging overhead).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from ketch import dag, get_current_context, task

START = datetime(2026, 1, 1, tzinfo=UTC)
OVERHEAD_REPS = int(os.environ.get("KETCH_BENCH_LOG_REPS", "5"))
SECRETS = ("s3cr3t-alpha-7f9c2d41", "tok_bravo_8e1a55c0d2", "p@ss-charlie-0042")


def _conf(name: str, default: Any) -> Any:
    return get_current_context()["dag_run"].conf.get(name, default)


@task
def ticker() -> None:
    """After ``delay`` s, a ``TICK i time.time()`` line every ``interval`` s for ``seconds``."""
    time.sleep(float(_conf("delay", 0)))
    seconds, interval = float(_conf("seconds", 10)), float(_conf("interval", 0.05))
    start = time.monotonic()
    i = 0
    while (now := time.monotonic()) - start < seconds:
        print(f"TICK {i} {time.time():.6f}", flush=True)
        i += 1
        time.sleep(max(0.0, start + i * interval - now))
    print(f"TICKS {i}", flush=True)


@task
def idle() -> None:
    time.sleep(float(_conf("seconds", 10)))


OVERHEAD_MODES = (
    "stdout",
    "devnull_line",
    "devnull_buffered",
    "pipe_line",
    "stdout_block",
    "stdout_unpaced",
)


@task
def overhead_writer(mode: str) -> None:
    """100k lines of ~80 bytes (1% hold a registered secret) printed to one target; the
    wall time of the prints, measured here, is the figure. Targets:

    - ``stdout``: the try's stdout as ketch sets it (the log pump's pipe, line buffered
      except during a burst: ``ketch.worker.stdout_pacing``);
    - ``devnull_line`` / ``devnull_buffered``: ``os.devnull`` opened line / block buffered;
    - ``pipe_line``: line buffered into a pipe read by ``cat > /dev/null`` (what any pipe
      costs, whoever reads it);
    - ``stdout_block``: the same stdout switched to block buffering;
    - ``stdout_unpaced``: the same stdout always line buffered (``[logging]
      coalesce_print_bursts = false``).
    """
    import json
    import subprocess
    import sys

    import psutil

    from ketch.logs import pump
    from ketch.worker import secrets_mask

    for secret in SECRETS:
        secrets_mask.mask_secret(secret)
    lines = []
    for i in range(100_000):
        payload = SECRETS[i % 3] if i % 100 == 0 else "lorem ipsum dolor sit amet"
        lines.append(f"{i:06d} {time.time():.6f} bench line with payload {payload}".ljust(79))
    handle = pump.current()
    pump_proc = psutil.Process(handle.pid) if handle is not None else None
    pump_cpu0 = sum(pump_proc.cpu_times()[:2]) if pump_proc else 0.0
    cat = None
    target: Any = sys.stdout  # the log pump's pipe (line buffered, as the runner sets it)
    if mode == "devnull_line":
        target = open(os.devnull, "w", buffering=1)  # noqa: SIM115 - closed below
    elif mode == "devnull_buffered":
        target = open(os.devnull, "w")  # noqa: SIM115 - closed below
    elif mode == "pipe_line":
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert cat.stdin is not None
        target = open(cat.stdin.fileno(), "w", buffering=1, closefd=False)  # noqa: SIM115
    elif mode == "stdout_block":
        sys.stdout.reconfigure(line_buffering=False)  # type: ignore[union-attr]
    elif mode == "stdout_unpaced":
        from ketch.worker import stdout_pacing

        stdout_pacing.stop()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for line in lines:
        print(line, file=target)
    target.flush()
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    if handle is not None:
        handle.problem()  # returns once the pump has processed every byte written
    t2 = time.perf_counter()
    pump_cpu = (sum(pump_proc.cpu_times()[:2]) - pump_cpu0) if pump_proc else None
    if mode == "stdout_block":
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    elif target is not sys.stdout:
        target.close()
    if cat is not None:
        assert cat.stdin is not None
        cat.stdin.close()
        cat.wait()
    result = {
        "mode": mode,
        "write_s": round(t1 - t0, 4),
        "until_pump_caught_up_s": round(t2 - t0, 4),
        "task_cpu_s": round(cpu1 - cpu0, 4),
        "pump_cpu_s": round(pump_cpu, 4) if pump_cpu is not None else None,
    }
    print("BENCH_OVERHEAD " + json.dumps(result), flush=True)


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def logs_follow() -> None:
    ticker()


@dag(schedule=None, start_date=START, is_paused_upon_creation=False, max_active_tasks=4)
def logs_s3() -> None:
    ticker.override(task_id="chatty")()
    idle.override(task_id="idle")()


@dag(schedule=None, start_date=START, is_paused_upon_creation=False, max_active_tasks=1)
def logs_overhead() -> None:
    """Repetitions one after the other, the order alternating (no order bias)."""
    previous = None
    for rep in range(OVERHEAD_REPS):
        modes = list(OVERHEAD_MODES)
        if rep % 2:
            modes.reverse()
        for mode in modes:
            current = overhead_writer.override(task_id=f"r{rep}_{mode}")(mode)
            if previous is not None:
                previous >> current
            previous = current


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def logs_memory() -> None:
    @task
    def small() -> None:
        print("a small log; the benchmark replaces it with a big one")

    small()


logs_follow()
logs_s3()
logs_overhead()
logs_memory()
