"""Import time of a DAG file through the Airflow compatibility layer vs the same DAG written
natively: ``python -m benchmarks.airflow_compat [--runs 21] [--tasks 50]``.

Two files define the same DAG (``--tasks`` python tasks in a chain, a bash task, a task
group, a branch): one imports ``airflow.sdk`` / ``airflow.operators.*`` / ``airflow.utils.*``
with ``[core] airflow_compat`` on, the other imports ``ketch``. Each run is a fresh Python
process (as a parse child or a try that is not preloaded is), which reports

- ``load``: the time of ``ketch.authoring.loader.collect_dags(file)`` alone (installing the
  finder, its look-up of a real Airflow, building the shim modules, resolving the names,
  and the DAG itself), and
- ``process``: the whole process's wall time, from ``exec`` to exit (interpreter start,
  ``import ketch``, the load), measured by the parent.

Figures: the median (and min) of ``--runs`` processes for each file, and the difference;
printed and written to benchmarks/results/airflow_compat.json. Measurements, never
assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

COMPAT_HEADER = """\
from datetime import datetime, timezone

from airflow.sdk import DAG, task
from airflow.models.baseoperator import chain
from airflow.operators.bash import BashOperator
from airflow.operators.empty import EmptyOperator
from airflow.operators.python import BranchPythonOperator, PythonOperator
from airflow.utils.task_group import TaskGroup
from airflow.utils.trigger_rule import TriggerRule

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
"""

# The same compat file with a pendulum start date, as most Airflow files have: pendulum's
# own import cost, not the layer's.
PENDULUM_HEADER = COMPAT_HEADER.replace(
    "START = datetime(2024, 1, 1, tzinfo=timezone.utc)",
    'import pendulum\n\nSTART = pendulum.datetime(2024, 1, 1, tz="UTC")',
)

NATIVE_HEADER = """\
from datetime import datetime, timezone

from ketch import DAG, BashTask as BashOperator, EmptyTask as EmptyOperator, TaskGroup, task
from ketch import TriggerRule
from ketch.authoring.helpers import chain
from ketch.authoring.python import BranchPythonTask as BranchPythonOperator
from ketch.authoring.python import PythonTask as PythonOperator

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
"""

BODY = """
def work(n):
    return n


with DAG("bench_{kind}", schedule="@daily", start_date=START, catchup=False) as dag:
    steps = [PythonOperator(task_id=f"step_{{i}}", python_callable=work, op_args=[i])
             for i in range({tasks})]
    chain(*steps)

    @task
    def total(values=None):
        return 0

    with TaskGroup("report") as report:
        BashOperator(task_id="write", bash_command="echo report")
    branch = BranchPythonOperator(task_id="branch", python_callable=lambda: "report.write")
    end = EmptyOperator(task_id="end", trigger_rule=TriggerRule.NONE_FAILED)
    steps[-1] >> total() >> branch >> [report, EmptyOperator(task_id="other")] >> end
"""

CHILD = """
import sys, time
from ketch.authoring.loader import collect_dags
t0 = time.perf_counter()
dags = collect_dags(sys.argv[1])
t1 = time.perf_counter()
assert len(dags) == 1 and len(dags[0].tasks) > 1
print(t1 - t0)
"""


KINDS = {"native": NATIVE_HEADER, "compat": COMPAT_HEADER, "compat_pendulum": PENDULUM_HEADER}


def write_files(folder: Path, tasks: int) -> dict[str, Path]:
    files = {}
    for kind, header in KINDS.items():
        path = folder / f"{kind}.py"
        path.write_text(header + BODY.format(kind=kind, tasks=tasks))
        files[kind] = path
    return files


def one_run(path: Path, compat: bool) -> tuple[float, float]:
    """(load seconds inside the child, the child's wall seconds) of one fresh process."""
    from ketch.authoring._defaults import PARSE_DEFAULTS_ENV, defaults_from_settings
    from ketch.config import Settings

    env = dict(os.environ)
    # What the DAG processor hands its parse child (no settings module in the child).
    env[PARSE_DEFAULTS_ENV] = json.dumps(
        {**defaults_from_settings(Settings()), "airflow_compat": compat}
    )
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1]), time.perf_counter() - started


def measure(runs: int, tasks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(Path(tmp), tasks)
        samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
        for kind in KINDS:  # warm the file system cache and .pyc files
            one_run(files[kind], kind != "native")
        for _ in range(runs):  # interleaved, so drift affects every kind alike
            for kind in KINDS:
                samples[kind].append(one_run(files[kind], kind != "native"))
    result: dict[str, Any] = {"runs": runs, "tasks": tasks + 5}
    for kind, values in samples.items():
        load = [v[0] * 1000 for v in values]
        proc = [v[1] * 1000 for v in values]
        result[kind] = {
            "load_ms_median": round(statistics.median(load), 2),
            "load_ms_min": round(min(load), 2),
            "process_ms_median": round(statistics.median(proc), 2),
            "process_ms_min": round(min(proc), 2),
        }
    result["compat_extra_load_ms_median"] = round(
        result["compat"]["load_ms_median"] - result["native"]["load_ms_median"], 2
    )
    result["compat_extra_process_ms_median"] = round(
        result["compat"]["process_ms_median"] - result["native"]["process_ms_median"], 2
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--tasks", type=int, default=50)
    args = parser.parse_args()
    result = measure(args.runs, args.tasks)
    print(f"DAG of {result['tasks']} tasks, median of {args.runs} fresh processes each:")
    for kind in KINDS:
        r = result[kind]
        print(
            f"  {kind:15s} load {r['load_ms_median']:7.2f} ms (min {r['load_ms_min']:.2f})"
            f"   process {r['process_ms_median']:7.2f} ms (min {r['process_ms_min']:.2f})"
        )
    print(
        f"  compat layer adds {result['compat_extra_load_ms_median']:.2f} ms to the load,"
        f" {result['compat_extra_process_ms_median']:.2f} ms to the process (medians)"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "airflow_compat.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
