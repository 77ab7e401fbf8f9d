"""Kubernetes executor benchmarks against the Kubernetes API simulator (real HTTP, the official
client, real pod processes), with 20 ms of injected latency on every API request.

``python -m benchmarks.kubernetes [--tasks 500] [--chain 30] [--latency 0.02]``

Figures (printed, and written to benchmarks/results/kubernetes.json):

- fan_out: pods created per second when ``launch_many`` gets ``--tasks`` tries at once
  (default settings: 16 creates in flight, 100 QPS / 200 burst). Target >= 50/s
  (Airflow's serial creates: 2-7/s).
- chain: a chain of ``--chain`` tries where the next try is launched from the event sink
  as soon as the previous one ends (the executor part of the scheduler's reaction):
  median time from the previous container's exit (written by the container itself) to
  the next pod's create answered, and from the TryEnded event to the create answered.
  Target <= 50 ms median. The scheduler's own database work is not included.
- requests_per_try: API requests the executor made per try in the fan-out (create +
  delete + its share of the single list and watch). No polling.

These are measurements, never assertions.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ketch.config import Settings
from ketch.executors.base import LaunchRequest, TryEnded, TryKey
from ketch.executors.kubernetes import KubernetesExecutor
from ketch.testing.kube_sim import Faults, KubeSimulator

RESULTS = Path(__file__).parent / "results"
EXIT_SCRIPT = (
    "import os, time\n"
    "out = os.environ.get('EXIT_FILE')\n"
    "if out:\n"
    "    open(out, 'w').write(repr(time.time()))\n"
)


def settings(tmp: Path, sim: KubeSimulator, namespace: str) -> Settings:
    template = tmp / f"{namespace}.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n"
        f"    - name: base\n      image: bench\n      command: [{sys.executable!r}, -c, {EXIT_SCRIPT!r}]\n"
    )
    kubeconfig = sim.write_kubeconfig(tmp / f"{namespace}.kubeconfig", namespace=namespace)
    return Settings(
        kubernetes={
            "namespace": namespace,
            "config_file": str(kubeconfig),
            "pod_template_file": str(template),
        },
        logging={"base_log_folder": str(tmp / "logs")},
    )


def request(task: str, i: int, **config: Any) -> LaunchRequest:
    return LaunchRequest(
        TryKey("bench", "r", task, 1), i, "tok", "b.py", "/b.py", executor_config=config
    )


def fan_out(tmp: Path, sim: KubeSimulator, n: int) -> dict[str, Any]:
    ex = KubernetesExecutor(settings(tmp, sim, "fanout"))
    events: queue.Queue[TryEnded] = queue.Queue()
    ex.start(events.put)
    requests = [request(f"t{i}", i) for i in range(n)]
    t0 = time.perf_counter()
    results = ex.launch_many(requests)
    elapsed = time.perf_counter() - t0
    failures = [r for r in results if not isinstance(r, str)]
    for _ in range(n):
        events.get(timeout=300)
    deadline = time.monotonic() + 120
    while sim.pods("fanout") and time.monotonic() < deadline:
        time.sleep(0.1)
    counts = dict(ex.api.requests)
    ex.stop()
    return {
        "tasks": n,
        "seconds": round(elapsed, 3),
        "pods_per_second": round(n / elapsed, 1),
        "launch_failures": len(failures),
        "requests": counts,
        "requests_per_try": round(sum(counts.values()) / n, 3),
    }


def chain(tmp: Path, sim: KubeSimulator, n: int) -> dict[str, Any]:
    ex = KubernetesExecutor(settings(tmp, sim, "chain"))
    done: queue.Queue[tuple[TryEnded, float, float]] = queue.Queue()
    exit_files = [tmp / f"exit-{i}" for i in range(n)]

    def req(i: int) -> LaunchRequest:
        return request(f"c{i}", i, env=[{"name": "EXIT_FILE", "value": str(exit_files[i])}])

    def sink(event: TryEnded) -> None:
        received = time.time()
        i = event.ti_id
        created = None
        if i + 1 < n:
            ex.launch(req(i + 1))
            created = time.time()
        done.put((event, received, created or received))

    ex.start(sink)
    ex.launch(req(0))
    from_exit, from_event = [], []
    for _ in range(n):
        event, received, created = done.get(timeout=120)
        if event.ti_id + 1 < n:
            exited = float(exit_files[event.ti_id].read_text())
            from_exit.append((created - exited) * 1000)
            from_event.append((created - received) * 1000)
    ex.stop()
    return {
        "tries": n,
        "exit_to_next_create_ms_median": round(statistics.median(from_exit), 1),
        "exit_to_next_create_ms_p90": round(statistics.quantiles(from_exit, n=10)[-1], 1),
        "event_to_next_create_ms_median": round(statistics.median(from_event), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--chain", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as d,
        KubeSimulator(faults=Faults(latency_seconds=args.latency)) as sim,
    ):
        tmp = Path(d)
        results = {
            "latency_seconds": args.latency,
            "fan_out": fan_out(tmp, sim, args.tasks),
            "chain": chain(tmp, sim, args.chain),
        }
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kubernetes.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
