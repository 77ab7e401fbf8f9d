"""A container's processes, and killing all of them as a container runtime does.

The simulator has no cgroups: every process of a container carries
``$KUBE_SIM_CONTAINER`` (``<pod uid>/<container name>``) in its environment, and that is
how a kill finds the processes that left the container's process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil

# Every process of a container carries "<pod uid>/<container name>" in its environment: the
# simulator's stand-in for the container's cgroup (see kill_container).
CONTAINER_ENV = "KUBE_SIM_CONTAINER"


class ContainerProcess(subprocess.Popen[bytes]):
    """A container's main process; ``container`` is the ``$KUBE_SIM_CONTAINER`` value that
    every process of the container inherits."""

    container: str = ""


def container_processes(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """Every process of ``proc``'s container but ``proc`` itself, in any session or
    process group: its descendants (while it lives, so that none is taken for an orphan
    yet) and any process that carries the container's ``$KUBE_SIM_CONTAINER`` (an orphan
    whose parent already died, a daemon that double-forked)."""
    found: dict[int, psutil.Process] = {}
    if proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            found.update((p.pid, p) for p in psutil.Process(proc.pid).children(recursive=True))
    marker = getattr(proc, "container", "")
    if marker:
        for p in psutil.process_iter():
            if p.pid in found or p.pid in (proc.pid, os.getpid()):
                continue
            with contextlib.suppress(psutil.Error):
                if p.environ().get(CONTAINER_ENV) == marker:
                    found[p.pid] = p
    return list(found.values())


def kill_container(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of ``proc``'s container, as the container runtime does
    through its cgroup (an OOM kill, an eviction, the end of a deletion's grace period):
    a process that left the container's process group (the try's log pump, in a session
    of its own) dies with it. Its processes are found before any is killed."""
    others = container_processes(proc)
    kill_group(proc, signal.SIGKILL)
    for other in others:
        with contextlib.suppress(psutil.Error):
            other.kill()


def kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
