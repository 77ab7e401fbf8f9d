"""``python -m ketch.testing.kube_sim --port N``: run the simulator standalone."""

from __future__ import annotations

import argparse
import json
import signal
import threading

from ketch.testing.kube_sim.faults import Faults
from ketch.testing.kube_sim.simulator import KubeSimulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ketch.testing.kube_sim",
        description="Run the ketch Kubernetes API simulator.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for the simulator to this path")
    parser.add_argument(
        "--namespace", default="default", help="namespace of the kubeconfig context"
    )
    parser.add_argument(
        "--faults", default="{}", help="initial faults as JSON, e.g. '{\"latency_seconds\": 0.02}'"
    )
    args = parser.parse_args(argv)
    sim = KubeSimulator(args.host, args.port, Faults().updated(json.loads(args.faults)))
    sim.start()
    if args.kubeconfig:
        sim.write_kubeconfig(args.kubeconfig, namespace=args.namespace)
    print(f"kube-sim listening on {sim.url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
