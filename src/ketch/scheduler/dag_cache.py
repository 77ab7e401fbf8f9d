"""Parsed serialized DAGs by hash, with the graph facts the scheduler needs precomputed.

Runs are pinned to a ``dag_hash``; parsing a 10,000-task ``SerializedDag`` costs far more
than a scheduling decision, so each hash is parsed once per process and kept (bounded).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import select
from sqlalchemy.orm import Session

from ketch.db.models import DagModel, DagVersion
from ketch.serialization import SerializedDag, SerializedTask


@dataclass(eq=False)
class DagInfo:
    """A serialized DAG plus derived graph facts (topological order, leaves, descendants)."""

    dag: SerializedDag
    _descendants: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def dag_id(self) -> str:
        return self.dag.dag_id

    def task(self, task_id: str) -> SerializedTask | None:
        return self.dag.tasks.get(task_id)

    @cached_property
    def leaves(self) -> frozenset[str]:
        return frozenset(self.dag.leaf_task_ids())

    @cached_property
    def branch_ids(self) -> frozenset[str]:
        """Tasks that record which direct downstream tasks they follow (``__branch__``):
        branch tasks and short-circuit tasks."""
        return frozenset(
            t.task_id for t in self.dag.tasks.values() if t.kind in ("branch", "short_circuit")
        )

    @cached_property
    def depends_on_past_ids(self) -> frozenset[str]:
        """Tasks with ``depends_on_past`` (a ``wait_for_downstream`` task is one too)."""
        return frozenset(t.task_id for t in self.dag.tasks.values() if t.depends_on_past)

    @cached_property
    def past_watched_ids(self) -> frozenset[str]:
        """Tasks whose state a later run's ``depends_on_past`` decision reads: those tasks
        and the direct downstream tasks of ``wait_for_downstream`` ones."""
        watched = set(self.depends_on_past_ids)
        for t in self.dag.tasks.values():
            if t.wait_for_downstream:
                watched.update(t.downstream_task_ids)
        return frozenset(watched)

    @cached_property
    def short_circuit_ancestors(self) -> dict[str, frozenset[str]]:
        """For each task below a short-circuit task that skips every descendant
        (``ignore_downstream_trigger_rules``), those short-circuit tasks."""
        out: dict[str, set[str]] = {}
        for t in self.dag.tasks.values():
            if t.kind == "short_circuit" and t.ignore_downstream_trigger_rules:
                for down in self.descendants(t.task_id):
                    out.setdefault(down, set()).add(t.task_id)
        return {tid: frozenset(ids) for tid, ids in out.items()}

    @cached_property
    def topological_order(self) -> list[str]:
        """Kahn's algorithm: upstreams before downstreams, definition order among equals."""
        indegree = {tid: len(t.upstream_task_ids) for tid, t in self.dag.tasks.items()}
        ready = [tid for tid, deg in indegree.items() if deg == 0]
        order: list[str] = []
        while ready:
            tid = ready.pop()
            order.append(tid)
            for down in self.dag.tasks[tid].downstream_task_ids:
                indegree[down] -= 1
                if indegree[down] == 0:
                    ready.append(down)
        return order

    def descendants(self, task_id: str) -> frozenset[str]:
        """Every task downstream of ``task_id`` (transitively); memoised."""
        cached = self._descendants.get(task_id)
        if cached is not None:
            return cached
        seen: set[str] = set()
        stack = list(self.dag.tasks[task_id].downstream_task_ids)
        while stack:
            tid = stack.pop()
            if tid not in seen:
                seen.add(tid)
                stack.extend(self.dag.tasks[tid].downstream_task_ids)
        result = frozenset(seen)
        self._descendants[task_id] = result
        return result


class DagCache:
    """Thread-safe LRU of :class:`DagInfo` by ``dag_hash``."""

    def __init__(self, max_entries: int = 256) -> None:
        self._entries: OrderedDict[str, DagInfo] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    def get(self, session: Session, dag_hash: str) -> DagInfo | None:
        with self._lock:
            info = self._entries.get(dag_hash)
            if info is not None:
                self._entries.move_to_end(dag_hash)
                return info
        data = session.scalar(select(DagVersion.serialized).where(DagVersion.dag_hash == dag_hash))
        if data is None:
            data = session.scalar(
                select(DagModel.serialized).where(DagModel.serialized_hash == dag_hash)
            )
        if data is None:
            return None
        info = DagInfo(SerializedDag.model_validate(data))
        with self._lock:
            self._entries[dag_hash] = info
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return info
