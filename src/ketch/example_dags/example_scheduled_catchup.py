"""A scheduled DAG with catchup: a run every 12 hours since start_date, three days back.

``max_active_runs=2`` keeps the backlog from flooding the executor; each run
sees its own data interval.
"""

from datetime import UTC, datetime, timedelta

from ketch import DAG, EmptyTask, task

with DAG(
    "example_scheduled_catchup",
    schedule=timedelta(hours=12),
    # Midnight three days ago: stable within a day, so re-parsing does not change the DAG.
    start_date=datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    - timedelta(days=3),
    catchup=True,
    max_active_runs=2,
    tags=["example", "scheduled"],
    is_paused_upon_creation=False,
    doc_md=__doc__,
):

    @task
    def report(data_interval_start: datetime, data_interval_end: datetime, ts: str) -> str:
        print(f"run at {ts}: interval {data_interval_start} .. {data_interval_end}")
        return ts

    report() >> EmptyTask(task_id="done")
