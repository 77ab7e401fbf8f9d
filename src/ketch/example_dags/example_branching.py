"""Branching: ``@task.branch`` picks one of two paths; the join runs after whichever ran.

The join uses ``none_failed_min_one_success`` so the skipped path does not skip it.
Trigger with conf ``{"path": "slow"}`` to take the other branch.
"""

from datetime import UTC, datetime

from ketch import EmptyTask, Param, dag, task


@dag(
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    tags=["example", "branching"],
    is_paused_upon_creation=False,
    params={"path": Param("fast", enum=["fast", "slow"], description="Which branch to take")},
)
def example_branching() -> None:
    """Choose a path from the ``path`` param, then join."""

    @task.branch
    def choose(params: dict[str, str]) -> str:
        return "fast_path" if params["path"] == "fast" else "slow_path"

    @task
    def fast_path() -> str:
        return "fast"

    @task
    def slow_path() -> str:
        return "slow"

    join = EmptyTask(task_id="join", trigger_rule="none_failed_min_one_success")
    choose() >> [fast_path(), slow_path()] >> join


example_branching()
