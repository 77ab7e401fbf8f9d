"""An in-process Executor for scheduler tests: scripted outcomes, no processes.

On launch, a thread plays the try's script: it marks the TI running (what the execution
API's ``try/start`` does), records the outcome with ``record_try_outcome`` (what
``try/finish`` does), writes the return value / branch choice as XComs, and then emits
``TryEnded`` like a real executor seeing the process exit. Scripts per task_id:

- ``Outcome.success(value)``, ``Outcome.fail()``, ``Outcome.skip()``, ``Outcome.branch([...])``
- ``Outcome.exit_without_report(code)``: ends without reporting (a crash)
- ``Outcome.vanish()``: ends with exit code None (a lost pod)
- ``Outcome.hang()``: starts, never ends until cancelled
- ``Outcome.never_start()``: launched, never calls start, never ends

A list of outcomes per task_id is consumed one per try (the last one repeats).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from ketch.db.models import DagRun, DagVersion, TaskInstance, TaskInstanceTry, XCom
from ketch.executors.base import (
    EventSink,
    LaunchError,
    LaunchRequest,
    RunningTry,
    TryEnded,
    TryKey,
)
from ketch.scheduler.task_state import record_try_outcome
from ketch.serialization import SerializedDag
from ketch.states import TaskInstanceState


@dataclass(frozen=True)
class Outcome:
    kind: str
    value: Any = None
    exit_code: int | None = 0
    delay: float = 0.0

    @classmethod
    def success(cls, value: Any = None, delay: float = 0.0) -> Outcome:
        return cls("success", value, delay=delay)

    @classmethod
    def fail(cls, delay: float = 0.0, retry: bool = True) -> Outcome:
        return cls("failed" if retry else "failed_no_retry", exit_code=1, delay=delay)

    @classmethod
    def skip(cls) -> Outcome:
        return cls("skipped")

    @classmethod
    def branch(cls, follow: list[str]) -> Outcome:
        return cls("branch", follow)

    @classmethod
    def exit_without_report(cls, code: int = 1) -> Outcome:
        return cls("exit", exit_code=code)

    @classmethod
    def vanish(cls) -> Outcome:
        return cls("vanish", exit_code=None)

    @classmethod
    def hang(cls) -> Outcome:
        return cls("hang")

    @classmethod
    def never_start(cls) -> Outcome:
        return cls("never_start")

    @classmethod
    def launch_error(cls) -> Outcome:
        return cls("launch_error")

    @classmethod
    def image_pull_error(cls) -> Outcome:
        """The pod never started: what the Kubernetes executor reports for ErrImagePull."""
        return cls("image_pull_error", exit_code=None)

    @classmethod
    def gate(cls, opened: threading.Event, value: Any = None) -> Outcome:
        """Running until ``opened`` is set, then a success (ordering without timing)."""
        return cls("gate", (opened, value))


@dataclass
class FakeExecutor:
    engine: Engine
    scripts: dict[str, list[Outcome] | Outcome] = field(default_factory=dict)
    alive_on_adopt: set[TryKey] = field(default_factory=set)
    name: str = "fake"

    def __post_init__(self) -> None:
        self._sink: EventSink | None = None
        self._lock = threading.Lock()
        self._running: dict[TryKey, threading.Event] = {}
        self.launched: list[TryKey] = []
        self.cancelled: list[TryKey] = []
        self.adopt_offers: list[RunningTry] = []
        self.adopt_calls = 0
        self.max_concurrent = 0
        self.concurrent_by_run: dict[str, int] = {}
        self.max_concurrent_by_run: dict[str, int] = {}
        self._tries_seen: dict[str, int] = {}

    # -- Executor protocol --------------------------------------------------------------

    def start(self, on_try_ended: EventSink) -> None:
        self._sink = on_try_ended

    def launch(self, request: LaunchRequest) -> str:
        outcome = self._next_outcome(request.key.task_id, request.key.map_index)
        if outcome.kind == "launch_error":
            raise LaunchError("no capacity (scripted)")
        stop = threading.Event()
        with self._lock:
            self.launched.append(request.key)
            self._running[request.key] = stop
            run = request.key.run_id
            self.concurrent_by_run[run] = self.concurrent_by_run.get(run, 0) + 1
            self.max_concurrent_by_run[run] = max(
                self.max_concurrent_by_run.get(run, 0), self.concurrent_by_run[run]
            )
            self.max_concurrent = max(self.max_concurrent, len(self._running))
        threading.Thread(target=self._play, args=(request, outcome, stop), daemon=True).start()
        return f"fake:{request.key.task_id}:{request.key.try_number}"

    def launch_many(self, requests: Sequence[LaunchRequest]) -> list[str | LaunchError]:
        results: list[str | LaunchError] = []
        for request in requests:
            try:
                results.append(self.launch(request))
            except LaunchError as exc:
                results.append(exc)
        return results

    def adopt(self, tries: Iterable[RunningTry]) -> list[TryKey]:
        tries = list(tries)
        self.adopt_calls += 1
        self.adopt_offers.extend(tries)
        adopted = []
        for offered in tries:
            if offered.key in self.alive_on_adopt:
                adopted.append(offered.key)
                with self._lock:
                    self._running[offered.key] = threading.Event()
            elif self._sink is not None:
                self._sink(TryEnded(offered.key, offered.ti_id, None, reason="vanished: not found"))
        return adopted

    def cancel(self, key: TryKey) -> None:
        with self._lock:
            self.cancelled.append(key)
            stop = self._running.get(key)
        if stop is not None:
            stop.set()

    def running(self) -> set[TryKey]:
        with self._lock:
            return set(self._running)

    def stop(self) -> None:
        pass

    # -- test helpers -------------------------------------------------------------------

    def finish_adopted(self, key: TryKey, ti_id: int, state: TaskInstanceState) -> None:
        """Let an adopted try report its outcome and end."""
        self._report(key, ti_id, Outcome(state.value))
        self._end(TryEnded(key, ti_id, 0))

    def _next_outcome(self, task_id: str, map_index: int = -1) -> Outcome:
        """The script of ``task_id[map_index]`` (one mapped instance), else of ``task_id``."""
        default = self.scripts.get(task_id, Outcome.success())
        script = self.scripts.get(f"{task_id}[{map_index}]", default)
        if isinstance(script, Outcome):
            return script
        with self._lock:
            n = self._tries_seen.get(task_id, 0)
            self._tries_seen[task_id] = n + 1
        return script[min(n, len(script) - 1)]

    def _play(self, request: LaunchRequest, outcome: Outcome, stop: threading.Event) -> None:
        key, ti_id = request.key, request.ti_id
        if outcome.kind == "never_start":
            stop.wait()
            self._end(TryEnded(key, ti_id, -15, reason="cancelled"))
            return
        if outcome.kind == "image_pull_error":
            self._end(TryEnded(key, ti_id, None, "ErrImagePull: no such image", True))
            return
        if not self._start(key, ti_id):
            self._end(TryEnded(key, ti_id, 1))
            return
        if outcome.delay:
            time.sleep(outcome.delay)
        if outcome.kind == "gate":
            opened, value = outcome.value
            while not (opened.wait(0.05) or stop.is_set()):
                pass
            outcome = Outcome.success(value)
        if outcome.kind == "hang":
            stop.wait()
            self._end(TryEnded(key, ti_id, -15, reason="cancelled"))
            return
        if outcome.kind in ("exit", "vanish"):
            self._end(TryEnded(key, ti_id, outcome.exit_code))
            return
        self._report(key, ti_id, outcome)
        self._end(TryEnded(key, ti_id, outcome.exit_code))

    def _end(self, event: TryEnded) -> None:
        with self._lock:
            if self._running.pop(event.key, None) is not None:
                run = event.key.run_id
                self.concurrent_by_run[run] = self.concurrent_by_run.get(run, 1) - 1
        assert self._sink is not None
        self._sink(event)

    def _start(self, key: TryKey, ti_id: int) -> bool:
        """What ``POST /execution/try/start`` does: queued with this try -> running."""
        with Session(self.engine) as session:
            ti = session.get(TaskInstance, ti_id, with_for_update=True)
            if ti is None or ti.state != "queued" or ti.try_number != key.try_number:
                return False
            now = datetime.now(UTC)
            ti.state, ti.start_date, ti.last_heartbeat_at = "running", now, now
            session.commit()
            return True

    def _report(self, key: TryKey, ti_id: int, outcome: Outcome) -> None:
        """What ``POST /execution/try/finish`` does."""
        with Session(self.engine) as session:
            ti = session.get(TaskInstance, ti_id)
            assert ti is not None
            if ti.state != "running" or ti.try_number != key.try_number:
                return
            run = session.get(DagRun, ti.dag_run_id)
            assert run is not None
            version = session.get(DagVersion, run.dag_hash)
            assert version is not None
            task = SerializedDag.model_validate(version.serialized).task(ti.task_id)
            state = {
                "success": TaskInstanceState.SUCCESS,
                "branch": TaskInstanceState.SUCCESS,
                "skipped": TaskInstanceState.SKIPPED,
            }.get(outcome.kind, TaskInstanceState.FAILED)
            now = datetime.now(UTC)
            if outcome.kind == "branch":
                session.add(
                    XCom(
                        dag_run_id=ti.dag_run_id,
                        task_id=ti.task_id,
                        key="__branch__",
                        value=outcome.value,
                        timestamp=now,
                    )
                )
            elif outcome.kind == "success" and outcome.value is not None:
                # A rerun after a clear replaces the value, as try/finish's upsert does.
                session.execute(
                    delete(XCom).where(
                        XCom.dag_run_id == ti.dag_run_id,
                        XCom.task_id == ti.task_id,
                        XCom.key == "return_value",
                        XCom.map_index == ti.map_index,
                    )
                )
                session.add(
                    XCom(
                        dag_run_id=ti.dag_run_id,
                        task_id=ti.task_id,
                        key="return_value",
                        value=outcome.value,
                        map_index=ti.map_index,
                        timestamp=now,
                    )
                )
            error = "boom (scripted)" if state == TaskInstanceState.FAILED else None
            record_try_outcome(
                session,
                ti,
                task,
                state=state,
                error=error,
                allow_retry=outcome.kind != "failed_no_retry",
                now=now,
            )
            session.commit()


def try_rows(engine: Engine, ti_id: int) -> list[TaskInstanceTry]:
    with Session(engine) as session:
        from sqlalchemy import select

        return list(
            session.scalars(
                select(TaskInstanceTry)
                .where(TaskInstanceTry.task_instance_id == ti_id)
                .order_by(TaskInstanceTry.try_number)
            )
        )


# -- building DAGs and runs for scheduler tests ---------------------------------------------


def serialized_dag(dag_id: str, tasks: dict[str, Any], **dag_fields: Any) -> dict[str, Any]:
    """A SerializedDag JSON from ``{task_id: {"upstream": [...], other SerializedTask fields}}``."""
    downstream: dict[str, list[str]] = {tid: [] for tid in tasks}
    for tid, spec in tasks.items():
        for up in spec.get("upstream", []):
            downstream[up].append(tid)
    task_json = {}
    for tid, spec in tasks.items():
        fields = {k: v for k, v in spec.items() if k != "upstream"}
        task_json[tid] = {
            "task_id": tid,
            "kind": fields.pop("kind", "python"),
            "upstream_task_ids": list(spec.get("upstream", [])),
            "downstream_task_ids": downstream[tid],
            **fields,
        }
    data = {
        "dag_id": dag_id,
        "fileloc": f"/dags/{dag_id}.py",
        "relative_fileloc": f"{dag_id}.py",
        "schedule": {"kind": "none"},
        "tasks": task_json,
        **dag_fields,
    }
    return SerializedDag.model_validate(data).model_dump(mode="json", by_alias=True)


def insert_dag(engine: Engine, data: dict[str, Any], *, paused: bool = False) -> None:
    import hashlib
    import json

    from ketch.db.models import DagModel

    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    with Session(engine) as session:
        session.merge(
            DagModel(
                dag_id=data["dag_id"],
                fileloc=data["fileloc"],
                relative_fileloc=data["relative_fileloc"],
                is_paused=paused,
                is_active=True,
                serialized=data,
                serialized_hash=digest,
                needs_next_dagrun=data["schedule"]["kind"] != "none",
            )
        )
        session.commit()


def trigger(
    engine: Engine,
    dag_id: str,
    run_id: str | None = None,
    *,
    logical_date: datetime | None = None,
) -> int:
    """Create a manual run as ``operations.trigger_dag`` will; returns dag_run.id."""
    from ketch.db.models import DagModel
    from ketch.scheduler.runs import create_dag_run
    from ketch.states import DagRunType

    with Session(engine) as session:
        dag = session.get(DagModel, dag_id)
        assert dag is not None
        now = datetime.now(UTC)
        run = create_dag_run(
            session,
            dag,
            run_type=DagRunType.MANUAL,
            run_id=run_id,
            logical_date=logical_date,
            data_interval=None,
            run_after=now,
            conf={},
            params={},
        )
        session.commit()
        return run.id


def ti_states(engine: Engine, dag_run_id: int) -> dict[str, str | None]:
    from sqlalchemy import select

    with Session(engine) as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_run_id == dag_run_id
            )
        )
        return {task_id: state for task_id, state in rows}


def run_state(engine: Engine, dag_run_id: int) -> str:
    with Session(engine) as session:
        run = session.get(DagRun, dag_run_id)
        assert run is not None
        return run.state


def drive(scheduler: Any, done: Any, timeout: float = 20.0) -> None:
    """Call ``scheduler.run_once()`` until ``done()`` is true (events come from other threads)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("scheduler did not reach the expected state in time")
        busy = scheduler.run_once()
        if not busy:
            scheduler._signal.wait(0.05)
