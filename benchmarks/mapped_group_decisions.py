"""Cost of deciding a mapped task group's chained task per map_index: ``python -m
benchmarks.mapped_group_decisions [--n 1000]``.

In memory, no database: a group ``tg`` of ``a >> b`` mapped N ways; each instance of ``a``
ends in turn and the scheduler's step re-decides ``b``'s undecided instances
(``ketch.scheduler.mapped_group.decide_instances``), as the event path does when the ends
arrive one per loop iteration (the worst case: batched ends cost one pass per batch).
Prints the total and the cost per instance end. The pass is O(undecided instances), so a
whole group costs O(N^2 / 2) cheap steps; the rule itself is evaluated once per distinct
combination of upstream states.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from ketch import dag, task, task_group
from ketch.authoring.serialize import serialize_dag
from ketch.scheduler.dag_cache import DagInfo
from ketch.scheduler.evaluation import RunTally
from ketch.scheduler.mapped_group import decide_instances, inner_upstreams


def measure(n: int) -> float:
    """Seconds to decide ``b`` after each of ``n`` instance ends of ``a``."""

    @dag(dag_id="bench_group", schedule=None, start_date=datetime(2026, 1, 1))
    def bench_group():
        @task
        def a(x):
            return x

        @task
        def b(v):
            return v

        @task_group
        def tg(x):
            return b(a(x))

        tg.expand(x=list(range(n)))

    info = DagInfo(serialize_dag(bench_group(), Path("/tmp")))
    rows = [("tg.a", i, "scheduled") for i in range(n)] + [("tg.b", i, None) for i in range(n)]
    tally = RunTally.build(1, info, rows, {})
    b = info.task("tg.b")
    assert b is not None
    inner = inner_upstreams(tally, b)
    began = time.perf_counter()
    for i in range(n):
        tally.set_state("tg.a", "success", i)
        for index, decision in decide_instances(tally, b, inner).items():
            tally.set_state("tg.b", decision.value, index)
    elapsed = time.perf_counter() - began
    assert all(state == "scheduled" for state in tally.instances["tg.b"].values())
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    elapsed = measure(args.n)
    print(
        f"n={args.n}: {elapsed:.3f} s for {args.n} instance ends, "
        f"{elapsed / args.n * 1e3:.3f} ms per end"
    )


if __name__ == "__main__":
    main()
