"""Fan out, fan in: one task feeds ten parallel tasks whose results one task sums."""

from datetime import UTC, datetime

from ketch import dag, task

WIDTH = 10


@dag(
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    tags=["example", "parallel"],
    is_paused_upon_creation=False,
)
def example_fan_out_fan_in() -> None:
    """``start`` >> ``square``, ``square__1`` ... ``square__9`` >> ``total``."""

    @task
    def start() -> int:
        return 1

    @task
    def square(base: int, i: int) -> int:
        return (base + i) ** 2

    @task
    def total(values: list[int]) -> int:
        result = sum(values)
        print(f"sum of squares: {result}")
        return result

    base = start()
    total([square(base, i) for i in range(WIDTH)])


example_fan_out_fan_in()
