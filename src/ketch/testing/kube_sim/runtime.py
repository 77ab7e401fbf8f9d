"""What the simulated node keeps for each pod while it runs: processes and their logs.

Shared by the cluster (which creates, deletes and shuts pods down) and the kubelet (which
runs them), so neither imports the other for it.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

NODE_NAME = "kube-sim-node"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LogBuffer:
    """One container's output, readable while it grows."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done = False
        self.cond = threading.Condition()

    def append(self, chunk: bytes) -> None:
        with self.cond:
            self.data.extend(chunk)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()


@dataclass
class PodRuntime:
    uid: str
    namespace: str
    name: str
    wake: threading.Event = field(default_factory=threading.Event)
    stop: bool = False
    running: bool = False
    finished: bool = False
    delete_deadline: float | None = None
    oom_requested: bool = False
    evict_requested: bool = False
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, LogBuffer] = field(default_factory=dict)
    # the log of each restarted container's previous run (``GET .../log?previous=true``)
    previous_logs: dict[str, LogBuffer] = field(default_factory=dict)
    thread: threading.Thread | None = None
