"""Extract, transform, load: values flow between @task functions as return values.

``transform`` has retries (a short delay so a failure shows its retry quickly);
a bash task reports the result at the end.
"""

from datetime import UTC, datetime, timedelta

from ketch import BashTask, dag, task


@dag(
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    tags=["example", "etl"],
    is_paused_upon_creation=False,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=1)},
)
def example_etl() -> None:
    """Extract three orders, total them, load the total, then announce it with bash."""

    @task
    def extract() -> list[dict[str, float]]:
        return [{"id": 1, "amount": 12.5}, {"id": 2, "amount": 7.5}, {"id": 3, "amount": 30.0}]

    @task
    def transform(orders: list[dict[str, float]]) -> dict[str, float]:
        return {"count": len(orders), "total": sum(o["amount"] for o in orders)}

    @task
    def load(summary: dict[str, float]) -> float:
        print(f"loaded {summary['count']} orders, total {summary['total']}")
        return summary["total"]

    announce = BashTask(task_id="announce", bash_command="echo 'ETL done'")
    load(transform(extract())) >> announce


example_etl()
