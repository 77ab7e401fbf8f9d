"""The fake kubelet: drives one pod through its life with local processes.

Schedule (or stay Pending under a fault), pull images (or fail to), resolve each
container's environment, run init containers then containers as process groups, honour
the restart policy, OOM kills and evictions, and write the pod's status and Events the
way a real kubelet does, so the executor under test sees what it would see in a cluster.
"""

from __future__ import annotations

import copy
import functools
import io
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ketch.testing.kube_sim.container_env import (
    ConfigError,
    container_command,
    container_env,
    container_workdir,
    pod_hostname,
)
from ketch.testing.kube_sim.pod_status import container_status, set_condition, terminated
from ketch.testing.kube_sim.processes import (
    CONTAINER_ENV,
    ContainerProcess,
    kill_container,
    kill_group,
)
from ketch.testing.kube_sim.runtime import NODE_NAME, LogBuffer, PodRuntime, now_rfc3339
from ketch.testing.kube_sim.selectors import labels_match

if TYPE_CHECKING:
    from ketch.testing.kube_sim.cluster import Cluster

# back-off before a container is restarted (restartPolicy OnFailure/Always), doubling: a
# real kubelet waits 10 s doubling to 5 min; the simulator is quicker
RESTART_BACKOFF_FIRST = 0.1
RESTART_BACKOFF_MAX = 2.0


class Kubelet:
    """Drives one pod: schedule, pull images, run init containers, run containers, report."""

    POLL = 0.05

    def __init__(self, cluster: Cluster, rt: PodRuntime, pod: dict[str, Any]) -> None:
        self.cluster = cluster
        self.rt = rt
        self.pod = copy.deepcopy(pod)
        self.spec = self.pod["spec"]
        self.init_statuses: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        # main containers restarted under the pod's restartPolicy: (restartCount, lastState)
        self.restarts: dict[str, tuple[int, dict[str, Any]]] = {}
        self.oom_killed: set[str] = set()  # containers whose current run was OOM-killed

    # helpers

    def _wait(self, seconds: float) -> None:
        self.rt.wake.wait(seconds)
        self.rt.wake.clear()

    def _selected(self, selector: str | None) -> bool:
        return selector is not None and labels_match(selector, self.pod)

    def _update(self, fn: Callable[[dict[str, Any]], None]) -> bool:
        def apply(pod: dict[str, Any]) -> None:
            fn(pod)
            if self.init_statuses:
                pod["status"]["initContainerStatuses"] = list(self.init_statuses.values())
            if self.statuses:
                statuses = []
                for s in self.statuses.values():
                    restarted = self.restarts.get(s["name"])
                    if restarted is not None:
                        s = {**s, "restartCount": restarted[0], "lastState": restarted[1]}
                    statuses.append(s)
                pod["status"]["containerStatuses"] = statuses

        return self.cluster.update_pod(self.rt, apply)

    def _event(self, type_: str, reason: str, message: str, component: str = "kubelet") -> None:
        self.cluster.record_event(self.pod, type_, reason, message, component)

    # stages

    def run(self) -> None:
        try:
            if not self._schedule():
                return
            if not self._run_init_containers():
                return
            self._run_containers()
        finally:
            self.rt.finished = True
            for buf in self.rt.logs.values():
                buf.close()

    def _schedule(self) -> bool:
        reported = False
        while not self.rt.stop:
            faults = self.cluster.faults
            if self._selected(faults.unschedulable_selector):
                if not reported:
                    msg = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
                    self._update(
                        functools.partial(
                            set_condition,
                            type_="PodScheduled",
                            status="False",
                            reason="Unschedulable",
                            message=msg,
                        )
                    )
                    self._event("Warning", "FailedScheduling", msg, "default-scheduler")
                    reported = True
                self._wait(0.1)
                continue

            def scheduled(p: dict[str, Any]) -> None:
                p["spec"]["nodeName"] = NODE_NAME
                set_condition(p, "PodScheduled", "True")

            self._update(scheduled)
            self._event(
                "Normal",
                "Scheduled",
                f"Successfully assigned {self.rt.namespace}/{self.rt.name} to {NODE_NAME}",
                "default-scheduler",
            )
            return True
        return False

    def _pull(self, c: dict[str, Any], statuses: dict[str, dict[str, Any]]) -> bool:
        image = c["image"]
        attempts = 0
        while not self.rt.stop:
            if image not in self.cluster.faults.image_pull_failures:
                if attempts:
                    self._event("Normal", "Pulling", f'Pulling image "{image}"')
                self._event(
                    "Normal", "Pulled", f'Container image "{image}" already present on machine'
                )
                return True
            attempts += 1
            if attempts == 1:
                msg = f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found'
                statuses[c["name"]] = container_status(
                    c, {"waiting": {"reason": "ErrImagePull", "message": msg}}
                )
                self._update(lambda p: None)
                self._event("Normal", "Pulling", f'Pulling image "{image}"')
                self._event("Warning", "Failed", msg)
                self._event("Warning", "Failed", "Error: ErrImagePull")
            elif attempts == 3:
                msg = f'Back-off pulling image "{image}"'
                statuses[c["name"]] = container_status(
                    c, {"waiting": {"reason": "ImagePullBackOff", "message": msg}}
                )
                self._update(lambda p: None)
                self._event("Normal", "BackOff", msg)
                self._event("Warning", "Failed", "Error: ImagePullBackOff")
            self._wait(0.1)
        return False

    def hostname(self) -> str:
        """The pod's hostname (see :func:`container_env.pod_hostname`)."""
        return pod_hostname(self.spec, self.rt.namespace, self.rt.name)

    def _env(self, c: dict[str, Any]) -> dict[str, str]:
        return container_env(self.cluster, self.rt, self.pod, c, self.hostname())

    def _command(self, c: dict[str, Any]) -> list[str]:
        return container_command(self.cluster, c)

    def _workdir(self, c: dict[str, Any]) -> str:
        return container_workdir(self.cluster, self.rt, c)

    def _start(
        self, c: dict[str, Any], statuses: dict[str, dict[str, Any]]
    ) -> subprocess.Popen[bytes] | str | None:
        """Start a container: a process, ``None`` (nothing to run: exits 0), or an error text."""
        buf = LogBuffer()
        while not self.rt.stop:
            try:
                env = self._env(c)
                break
            except ConfigError as exc:
                if (
                    statuses.get(c["name"], {}).get("state", {}).get("waiting", {}).get("reason")
                    != "CreateContainerConfigError"
                ):
                    statuses[c["name"]] = container_status(
                        c,
                        {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}},
                    )
                    self._update(lambda p: None)
                    self._event("Warning", "Failed", f"Error: {exc}")
                self._wait(0.2)
        else:
            return "stopped"
        self.rt.logs[c["name"]] = buf
        command = self._command(c)
        self._event("Normal", "Created", f"Created container {c['name']}")
        if not command:
            return None
        try:
            proc = ContainerProcess(
                command,
                cwd=self._workdir(c),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            buf.close()
            return f"failed to create containerd task: exec: {command[0]!r}: {exc.strerror or exc}"
        proc.container = env[CONTAINER_ENV]
        self.rt.procs[c["name"]] = proc
        threading.Thread(
            target=self._pump, args=(proc, buf), name=f"kube-sim-log-{self.rt.name}", daemon=True
        ).start()
        self._event("Normal", "Started", f"Started container {c['name']}")
        return proc

    @staticmethod
    def _pump(proc: subprocess.Popen[bytes], buf: LogBuffer) -> None:
        assert proc.stdout is not None
        stream = proc.stdout
        assert isinstance(stream, io.BufferedReader)
        while True:
            chunk = stream.read1(65536)
            if not chunk:
                break
            buf.append(chunk)
        buf.close()

    def _run_init_containers(self) -> bool:
        inits = self.spec.get("initContainers") or []
        if not inits:
            self._update(lambda p: set_condition(p, "Initialized", "True"))
            return True
        for c in inits:
            self.init_statuses[c["name"]] = container_status(
                c, {"waiting": {"reason": "PodInitializing"}}
            )
        for c in self.spec["containers"]:
            self.statuses[c["name"]] = container_status(
                c, {"waiting": {"reason": "PodInitializing"}}
            )
        self._update(
            lambda p: set_condition(
                p,
                "Initialized",
                "False",
                "ContainersNotInitialized",
                "containers with incomplete status: [" + " ".join(c["name"] for c in inits) + "]",
            )
        )
        for c in inits:
            if not self._pull(c, self.init_statuses):
                return False
            started = now_rfc3339()
            result = self._start(c, self.init_statuses)
            if result == "stopped":
                return False
            if isinstance(result, str):
                code, reason, msg = 128, "StartError", result
            elif result is None:
                code, reason, msg = 0, "Completed", None
            else:
                self.init_statuses[c["name"]] = container_status(
                    c, {"running": {"startedAt": started}}, started=True
                )
                self._update(lambda p: None)
                code = self._wait_exit({c["name"]: result}, main=False)[c["name"]]
                reason, msg = ("Completed" if code == 0 else "Error"), None
                self.rt.procs.pop(c["name"], None)
            if self.rt.stop:
                return False
            self.init_statuses[c["name"]] = container_status(
                c, terminated(code, reason, started, msg)
            )
            if code != 0:

                def failed(p: dict[str, Any], name: str = c["name"]) -> None:
                    p["status"]["phase"] = "Failed"
                    set_condition(
                        p,
                        "Initialized",
                        "False",
                        "ContainersNotInitialized",
                        f"containers with incomplete status: [{name}]",
                    )
                    set_condition(p, "Ready", "False", "PodFailed")

                self._update(failed)
                return False
            self._update(lambda p: None)
        self._update(lambda p: set_condition(p, "Initialized", "True"))
        return True

    def _wait_exit(
        self,
        procs: dict[str, subprocess.Popen[bytes]],
        *,
        main: bool = True,
        restart: Callable[[str, int], subprocess.Popen[bytes] | None] | None = None,
    ) -> dict[str, int]:
        """Wait for processes, applying deletion/OOM/eviction; returns exit codes.

        ``restart(name, exit_code)`` may start a container again (the pod's restartPolicy):
        its new process replaces the old one and the wait goes on."""
        codes: dict[str, int] = {}
        procs = dict(procs)
        started = dict.fromkeys(procs, time.monotonic())
        term_sent = False
        while True:
            for name, proc in list(procs.items()):
                if name not in codes and proc.poll() is not None:
                    rc = proc.returncode
                    code = rc if rc >= 0 else 128 - rc
                    rt = self.rt
                    again = None
                    if restart is not None and not (
                        rt.stop or rt.delete_deadline is not None or rt.evict_requested
                    ):
                        again = restart(name, code)
                    if again is not None:
                        procs[name] = again
                        started[name] = time.monotonic()
                    else:
                        codes[name] = code
            if len(codes) == len(procs):
                return codes
            rt = self.rt
            faults = self.cluster.faults
            now = time.monotonic()
            if rt.stop:
                for proc in procs.values():
                    kill_container(proc)
            elif rt.delete_deadline is not None:
                if not term_sent:
                    self._event("Normal", "Killing", "Stopping container")
                    for proc in procs.values():
                        kill_group(proc, signal.SIGTERM)
                    term_sent = True
                elif now >= rt.delete_deadline:
                    for proc in procs.values():
                        kill_container(proc)
            elif main:  # OOM and eviction faults target the main containers
                fault = self._selected(faults.oom_kill_selector)
                victims = [
                    name
                    for name in procs
                    if name not in codes
                    and name not in self.oom_killed
                    and (
                        rt.oom_requested
                        or (fault and now - started[name] >= faults.oom_after_seconds)
                    )
                ]
                rt.oom_requested = False
                if victims:
                    self.oom_killed.update(victims)
                    self._event(
                        "Warning",
                        "OOMKilling",
                        "Memory cgroup out of memory: Killed process (container exceeded its"
                        " memory limit)",
                    )
                    for name in victims:
                        kill_container(procs[name])
                elif not self.oom_killed and (
                    rt.evict_requested
                    or (
                        self._selected(faults.evict_selector)
                        and now - min(started.values()) >= faults.evict_after_seconds
                    )
                ):
                    rt.evict_requested = True
                    for proc in procs.values():
                        kill_container(proc)
            self._wait(self.POLL)

    def _restart_policy(self, name: str, code: int) -> bool:
        policy = self.spec.get("restartPolicy") or "Always"
        return policy == "Always" or (
            policy == "OnFailure" and (code != 0 or name in self.oom_killed)
        )

    def _restart(
        self, c: dict[str, Any], code: int, started: dict[str, str]
    ) -> subprocess.Popen[bytes] | None:
        """Run a main container again after it exited (restartPolicy OnFailure/Always): its
        last run becomes ``lastState`` and its log the ``previous`` log; None if it is not
        restarted (then its exit ends it)."""
        name = c["name"]
        if not self._restart_policy(name, code):
            return None
        oom = name in self.oom_killed
        self.oom_killed.discard(name)
        if oom:
            code, reason = 137, "OOMKilled"
        else:
            reason = "Completed" if code == 0 else "Error"
        count = self.restarts.get(name, (0, {}))[0] + 1
        self.restarts[name] = (count, terminated(code, reason, started[name]))
        old = self.rt.logs.get(name)
        if old is not None:
            with old.cond:  # the pipe is at its end when the process is gone (or nearly)
                old.cond.wait_for(functools.partial(getattr, old, "done"), timeout=1.0)
            old.close()
            self.rt.previous_logs[name] = old
        delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_FIRST * 2 ** (count - 1))
        self.statuses[name] = container_status(
            c,
            {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={name}"
                    f" pod={self.rt.name}_{self.rt.namespace}({self.rt.uid})",
                }
            },
        )
        self._update(lambda p: None)
        self._event("Warning", "BackOff", "Back-off restarting failed container")
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self.rt.stop or self.rt.delete_deadline is not None or self.rt.evict_requested:
                return None
            self._wait(min(self.POLL, max(0.0, deadline - time.monotonic())))
        result = self._start(c, self.statuses)
        if not isinstance(result, subprocess.Popen):
            return None
        started[name] = now_rfc3339()
        self.statuses[name] = container_status(
            c, {"running": {"startedAt": started[name]}}, ready=True, started=True
        )
        self._update(lambda p: None)
        return result

    def _run_containers(self) -> None:
        containers = self.spec["containers"]
        for c in containers:
            self.statuses[c["name"]] = container_status(
                c, {"waiting": {"reason": "ContainerCreating"}}
            )
        self._update(lambda p: set_condition(p, "Ready", "False", "ContainersNotReady"))
        for c in containers:
            if not self._pull(c, self.statuses):
                return
        procs: dict[str, subprocess.Popen[bytes]] = {}
        codes: dict[str, int] = {}
        messages: dict[str, str] = {}
        started = now_rfc3339()
        for c in containers:
            result = self._start(c, self.statuses)
            if result == "stopped":
                for proc in procs.values():
                    kill_container(proc)
                return
            if isinstance(result, str):
                codes[c["name"]] = 128
                messages[c["name"]] = result
            elif result is None:
                codes[c["name"]] = 0
            else:
                procs[c["name"]] = result
        with self.cluster.cond:
            self.rt.running = True
        for c in containers:
            if c["name"] in procs:
                self.statuses[c["name"]] = container_status(
                    c, {"running": {"startedAt": started}}, ready=True, started=True
                )
            elif c["name"] in messages:
                self.statuses[c["name"]] = container_status(
                    c, terminated(128, "StartError", started, messages[c["name"]])
                )
            else:
                self.statuses[c["name"]] = container_status(c, terminated(0, "Completed", started))

        def running(p: dict[str, Any]) -> None:
            p["status"]["phase"] = "Running"
            p["status"]["startTime"] = started
            p["status"]["hostIP"] = "127.0.0.1"
            p["status"]["podIP"] = "127.0.0.1"
            p["status"]["podIPs"] = [{"ip": "127.0.0.1"}]
            set_condition(p, "ContainersReady", "True")
            set_condition(p, "Ready", "True")

        self._update(running)
        started_at = dict.fromkeys(procs, started)
        by_name = {c["name"]: c for c in containers}
        codes.update(
            self._wait_exit(
                procs,
                restart=lambda name, code: self._restart(by_name[name], code, started_at),
            )
        )
        for name in procs:
            buf = self.rt.logs.get(name)
            if buf is not None:
                with buf.cond:
                    buf.cond.wait_for(functools.partial(getattr, buf, "done"), timeout=1.0)
                buf.close()
        rt = self.rt
        if rt.stop:
            return
        oom = bool(self.oom_killed)
        evicted = rt.evict_requested and not oom
        for c in containers:
            name = c["name"]
            if name in messages:
                continue
            code = codes[name]
            if name in self.oom_killed and name in procs:
                code, reason = 137, "OOMKilled"
            else:
                reason = "Completed" if code == 0 else "Error"
            self.statuses[name] = container_status(
                c, terminated(code, reason, started_at.get(name, started))
            )
        if evicted:
            self._event(
                "Warning",
                "Evicted",
                "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi.",
            )
        failed = evicted or any(code != 0 for code in codes.values()) or oom

        def finished(p: dict[str, Any]) -> None:
            st = p["status"]
            st["phase"] = "Failed" if failed else "Succeeded"
            if evicted:
                st["reason"] = "Evicted"
                st["message"] = (
                    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi."
                )
            set_condition(
                p, "ContainersReady", "False", "PodCompleted" if not failed else "PodFailed"
            )
            set_condition(p, "Ready", "False", "PodCompleted" if not failed else "PodFailed")

        self._update(finished)
        with self.cluster.cond:
            rt.running = False
        if rt.delete_deadline is not None:
            self.cluster.remove_after_grace(rt)
