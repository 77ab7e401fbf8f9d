"""``map_index_template``: where it is accepted, and how the try renders it (strictly after
a success, quietly after anything else)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from ketch import DAG, get_current_context, task
from ketch.authoring.map_index_template import render_map_index
from ketch.authoring.templating import TemplateError
from ketch.exceptions import DagDefinitionError

START = datetime(2026, 1, 1)


def _no_upstream(task_id: str, key: str) -> Any:
    raise AssertionError(task_id)


def _run(d: DAG, task_id: str, map_index: int) -> None:
    d.tasks[task_id].execute({"map_index": map_index, "params": {}}, _no_upstream)  # type: ignore[arg-type]


def test_the_template_renders_with_the_instance_arguments_and_its_own_context() -> None:
    with DAG("named", schedule=None, start_date=START, default_args={"retries": 0}) as d:

        @task(map_index_template="{{ task.op_kwargs['path'] }}")
        def load(path):
            return path

        @task
        def labelled(x):
            get_current_context()["label"] = f"item {x}"

        load.expand(path=["a.csv", "b.csv"])
        labelled.override(map_index_template="{{ label }}").expand(x=[7, 8])
    _run(d, "load", 1)
    assert render_map_index(strict=True, task_id="load") == "b.csv"
    _run(d, "labelled", 0)
    assert render_map_index(strict=True) == "item 7"


def test_a_template_that_cannot_render_fails_strictly_and_is_dropped_quietly() -> None:
    with DAG("bad_name", schedule=None, start_date=START) as d:

        @task(map_index_template="{{ nope }}")
        def work(x):
            return x

        work.expand(x=[1])
    _run(d, "work", 0)
    with pytest.raises(TemplateError, match="map_index_template '\\{\\{ nope \\}\\}' could not"):
        render_map_index(strict=True)
    assert render_map_index(strict=False) is None
    # Another task's try (one that failed before its task started) gets no name from it.
    assert render_map_index(strict=False, task_id="other") is None


def test_no_template_no_name_and_a_long_name_is_cut_to_250() -> None:
    with DAG("long_name", schedule=None, start_date=START) as d:

        @task(map_index_template="{{ 'x' * 300 }}")
        def long(x):
            return x

        @task
        def plain(x):
            return x

        long.expand(x=[1])
        plain.expand(x=[1])
    _run(d, "long", 0)
    assert render_map_index(strict=True) == "x" * 250
    _run(d, "plain", 0)
    assert render_map_index(strict=True) is None


def test_the_template_must_be_a_string_and_cannot_be_mapped() -> None:
    from ketch import BashOperator

    @task(map_index_template=3)
    def work(x):
        return x

    with (
        pytest.raises(DagDefinitionError, match="map_index_template must be a string"),
        DAG("bad", schedule=None, start_date=START),
    ):
        work.expand(x=[1])
    with (
        pytest.raises(DagDefinitionError, match="cannot map over the task argument"),
        DAG("bad2", schedule=None, start_date=START),
    ):
        BashOperator.partial(task_id="b").expand(map_index_template=["{{ 1 }}"])
    # A classic operator takes it in partial() (Airflow's documented use).
    with DAG("classic", schedule=None, start_date=START) as d:
        BashOperator.partial(task_id="b", map_index_template="{{ task.bash_command }}").expand(
            bash_command=["echo 1"]
        )
    assert d.tasks["b"].map_index_template == "{{ task.bash_command }}"
