"""``multiple_outputs`` (Airflow's): a returned dict stored whole and key by key, and
``output["key"]`` in a downstream task reading one key.

Inference from the return annotation, the task's result, the runner's outcome, and the
whole path through the execution API and a real try process.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest

from ketch import DAG, task
from ketch.authoring.context import build_context
from ketch.authoring.python import infer_multiple_outputs
from ketch.authoring.xcom_args import XComArg
from ketch.worker.runner.return_values import success_outcome
from tests.unit.test_authoring import PAYLOAD

START = datetime(2026, 1, 1)


def _dict() -> dict[str, int]:
    return {}


def _mapping() -> Mapping[str, int]:
    return {}


def _typing_dict() -> typing.Dict[str, int]:  # noqa: UP006 (Airflow users still write it)
    return {}


def _plain_dict() -> dict:  # type: ignore[type-arg]
    return {}


def _int() -> int:
    return 1


def _none():  # type: ignore[no-untyped-def]
    return {}


def _unknown() -> NoSuchType:  # type: ignore[name-defined]  # noqa: F821
    return {}


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (_dict, True),
        (_mapping, True),
        (_typing_dict, True),
        (_plain_dict, True),
        (_int, False),
        (_none, False),
        (_unknown, False),  # an annotation that cannot be evaluated: not inferred
    ],
)
def test_inferred_from_a_mapping_return_annotation(func: Any, expected: bool) -> None:
    assert infer_multiple_outputs(func) is expected


def build() -> DAG:
    with DAG("mo", schedule=None, start_date=START) as d:

        @task
        def annotated() -> dict[str, int]:
            return {"a": 1, "b": 2}

        @task(multiple_outputs=True)
        def explicit():  # type: ignore[no-untyped-def]
            return {"x": "y"}

        @task(multiple_outputs=False)
        def refused() -> dict[str, int]:
            return {"a": 1}

        @task
        def plain():  # type: ignore[no-untyped-def]
            return {"a": 1}

        @task(multiple_outputs=True)
        def not_a_dict():  # type: ignore[no-untyped-def]
            return [1]

        @task
        def use(a: int, x: str) -> str:
            return f"{a}{x}"

        out = annotated()
        use(out["a"], explicit()["x"])
        refused()
        plain()
        not_a_dict()
    return d


def test_flag_on_the_task() -> None:
    d = build()
    flags = {t: getattr(d.get_task(t), "multiple_outputs", None) for t in d.tasks}
    assert flags == {
        "annotated": True,
        "explicit": True,
        "refused": False,
        "plain": False,
        "not_a_dict": True,
        "use": False,
    }


def test_subscript_links_the_task_and_reads_that_key() -> None:
    d = build()
    assert d.get_task("use").upstream_task_ids == {"annotated", "explicit"}
    args = d.get_task("use").op_args
    assert [(a.operator.task_id, a.key) for a in args] == [("annotated", "a"), ("explicit", "x")]
    pulled: list[tuple[str, str]] = []

    def pull(task_id: str, key: str = "return_value") -> Any:
        pulled.append((task_id, key))
        return {"a": 1, "x": "!"}[key]

    result = d.get_task("use").execute(build_context(PAYLOAD), pull)
    assert result.return_value == "1!"
    assert pulled == [("annotated", "a"), ("explicit", "x")]


def test_subscript_takes_only_strings_and_an_xcomarg_is_not_iterable() -> None:
    d = build()
    out = XComArg(d.get_task("annotated"))
    with pytest.raises(ValueError, match="only supports str lookup"):
        out[0]  # type: ignore[index]
    with pytest.raises(TypeError, match="not iterable"):
        _a, _b = out  # type: ignore[misc]


def run(task_id: str) -> Any:
    return build().get_task(task_id).execute(build_context(PAYLOAD), lambda *_: None)


def test_each_key_is_a_further_xcom_besides_the_return_value() -> None:
    result = run("annotated")
    assert result.return_value == {"a": 1, "b": 2}
    assert result.xcoms == {"a": 1, "b": 2}
    assert run("plain").xcoms is None
    assert run("refused").xcoms is None


def test_a_non_dict_fails_with_airflows_message() -> None:
    with pytest.raises(TypeError, match="expected dictionary for multiple_outputs"):
        run("not_a_dict")


def test_runner_outcome_carries_the_keys_encoded() -> None:
    outcome = success_outcome("annotated", run("annotated"), {"max_xcom_size": 1000})
    assert outcome.state == "success"
    assert outcome.xcoms == {"a": 1, "b": 2}
    assert outcome.return_value == {"a": 1, "b": 2}
    too_big = success_outcome("annotated", run("annotated"), {"max_xcom_size": 5})
    assert too_big.state == "failed" and "max_xcom_size" in (too_big.error or "")


def test_ti_xcom_push_is_stored_with_the_outcome_and_multiple_outputs_win() -> None:
    with DAG("push", schedule=None, start_date=START) as d:

        @task(multiple_outputs=True)
        def pusher(ti: Any) -> dict[str, int]:
            ti.xcom_push("extra", [1, 2])
            ti.xcom_push("k", "pushed")
            return {"k": 1}

        pusher()
    result = d.get_task("pusher").execute(build_context(PAYLOAD), lambda *_: None)
    assert result.xcoms == {"extra": [1, 2], "k": 1}
    outcome = success_outcome("pusher", result, {"max_xcom_size": 1000})
    assert outcome.xcoms == {"extra": [1, 2], "k": 1}
    d.get_task("pusher").python_callable = lambda ti: ti.xcom_push(3, "x")  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="non-empty string"):
        d.get_task("pusher").execute(build_context(PAYLOAD), lambda *_: None)


def test_a_dag_param_is_not_subscriptable() -> None:
    from ketch.authoring.xcom_args import DagParam

    with DAG("p", schedule=None, start_date=START) as d:
        param = DagParam(d, "x", 1)
    with pytest.raises(TypeError, match="cannot be subscripted"):
        param["k"]
