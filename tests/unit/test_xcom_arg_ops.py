"""``XComArg.map()``, ``.zip()`` and ``.concat()``: authoring errors, the lazy values a try
reads, the shape the DAG processor stores, and the number of instances the scheduler
expands to from the upstream values in the database (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch import DAG, dag, task
from ketch.authoring.serialize import serialize_dag
from ketch.db.models import TaskInstance, XCom
from ketch.scheduler.dag_cache import DagInfo
from ketch.scheduler.expansion import expand_mapped_task
from ketch.serialization import SerializedDag
from ketch.worker.serde import encode
from tests.support.fake_executor import insert_dag, trigger

START = datetime(2026, 1, 1)


def _dag() -> DAG:
    @dag(schedule=None, start_date=START)
    def ops():
        @task
        def nums():
            return [1, 2, 3]

        @task
        def words():
            return {"a": 1, "b": 2}

        @task
        def more():
            return [7]

        @task
        def show(v):
            return v

        n, w, m = nums(), words(), more()
        show.override(task_id="mapped").expand(v=n.map(lambda x: x * 10).map(str))
        show.override(task_id="zipped").expand(v=n.zip(w))
        show.override(task_id="zipped_fill").expand(v=n.zip(w, fillvalue="-"))
        show.override(task_id="concatenated").expand(v=n.concat(w).concat(m))
        show.override(task_id="crossed").expand(v=n.zip(m, fillvalue=0), k=[1, 2])

    return ops()


VALUES = {"nums": [1, 2, 3], "words": {"a": 1, "b": 2}, "more": [7]}


def _pull(task_id: str, key: str) -> Any:
    return VALUES[task_id]


def _each(d: DAG, task_id: str, n: int) -> list[Any]:
    return [d.tasks[task_id].unmap(i, _pull).op_kwargs["v"] for i in range(n)]  # type: ignore[attr-defined]


def test_each_instance_reads_its_element_of_the_transformed_values() -> None:
    d = _dag()
    assert _each(d, "mapped", 3) == ["10", "20", "30"]
    assert _each(d, "zipped", 2) == [(1, ("a", 1)), (2, ("b", 2))]
    assert _each(d, "zipped_fill", 3) == [(1, ("a", 1)), (2, ("b", 2)), (3, "-")]
    assert _each(d, "concatenated", 6) == [1, 2, 3, ("a", 1), ("b", 2), 7]
    assert d.tasks["crossed"].unmap(5, _pull).op_kwargs == {"v": (3, 0), "k": 2}  # type: ignore[attr-defined]


def test_the_lazy_values_behave_as_sequences() -> None:
    d = _dag()
    n = d.tasks["zipped"].expand_value["v"]  # type: ignore[attr-defined]
    zipped = n.resolve(_pull)
    assert len(zipped) == 2 and list(zipped) == [(1, ("a", 1)), (2, ("b", 2))]
    assert zipped[-1] == (2, ("b", 2))
    with pytest.raises(IndexError):
        zipped[2]
    concat = d.tasks["concatenated"].expand_value["v"]  # type: ignore[attr-defined]
    assert len(concat.resolve(_pull)) == 6 and concat.resolve(_pull)[-1] == 7
    mapped = d.tasks["mapped"].expand_value["v"]  # type: ignore[attr-defined]
    calls: list[int] = []
    lazy = mapped.arg.map(lambda x: calls.append(x) or x).resolve(_pull)
    assert len(lazy) == 3 and calls == []  # nothing runs until an element is read
    assert lazy[1] == 2 and calls == [2]


def test_the_calls_combine_in_any_order() -> None:
    with DAG("mixed", schedule=None, start_date=START) as d:

        @task
        def nums():
            return [1, 2, 3]

        @task
        def words():
            return {"a": 1, "b": 2}

        @task
        def show(v):
            return v

        n, w = nums(), words()
        show.override(task_id="map_zip").expand(v=n.map(lambda x: -x).zip(w))
        show.override(task_id="zip_map").expand(v=n.zip(w).map(lambda p: f"{p[0]}{p[1][0]}"))
        show.override(task_id="concat_maps").expand(v=n.map(str).concat(w.map(lambda kv: kv[1])))
        show.override(task_id="kwargs").expand_kwargs(n.map(lambda x: {"v": x * 2}))
    assert _each(d, "map_zip", 2) == [(-1, ("a", 1)), (-2, ("b", 2))]
    assert _each(d, "zip_map", 2) == ["1a", "2b"]
    assert _each(d, "concat_maps", 5) == ["1", "2", "3", 1, 2]
    assert _each(d, "kwargs", 3) == [2, 4, 6]
    s = serialize_dag(d, Path("/tmp"))
    shapes = {t: s.tasks[t].expand.args[0] for t in ("map_zip", "zip_map", "kwargs")}  # type: ignore[union-attr]
    assert shapes["map_zip"].combine == "zip" and shapes["zip_map"].combine == "zip"
    assert shapes["kwargs"].xcom_task_id == "nums" and shapes["kwargs"].name is None
    # An ordinary task may take one too: it gets a read-only sequence, shown by its kind.
    assert repr(n.zip(w).resolve(_pull)) == "<XCom zip of 2 items>"


def test_calls_chain_flatten_and_link_every_source() -> None:
    d = _dag()
    mapped = d.tasks["mapped"].expand_value["v"]  # type: ignore[attr-defined]
    assert len(mapped.callables) == 2 and repr(mapped).endswith(".map(<lambda>).map(str)")
    concat = d.tasks["concatenated"].expand_value["v"]  # type: ignore[attr-defined]
    assert len(concat.args) == 3
    assert d.tasks["concatenated"].upstream_task_ids == {"nums", "words", "more"}
    assert d.tasks["zipped"].upstream_task_ids == {"nums", "words"}
    # Every source's value must be mappable: each source knows it is mapped over.
    from ketch.authoring.mapped import mapped_dependants

    assert "concatenated" in mapped_dependants(d.tasks["more"])


def test_the_stored_shape_names_every_source() -> None:
    s = serialize_dag(_dag(), Path("/tmp"))
    mapped = s.tasks["mapped"].expand
    assert mapped is not None and mapped.args[0].xcom_task_id == "nums"
    assert mapped.args[0].combine is None
    zipped = s.tasks["zipped_fill"].expand
    assert zipped is not None
    (arg,) = zipped.args
    assert (arg.name, arg.combine, arg.fill) == ("v", "zip", True)
    assert [p.xcom_task_id for p in arg.parts] == ["nums", "words"]
    concat = s.tasks["concatenated"].expand
    assert concat is not None and concat.args[0].combine == "concat"
    assert [p.xcom_task_id for p in concat.args[0].parts] == ["nums", "words", "more"]
    # A shape stored before zip/concat existed still reads.
    old = {"kind": "dict_of_lists", "args": [{"name": "x", "xcom_task_id": "a"}]}
    again = type(concat).model_validate(old)
    assert again.args[0].combine is None and again.args[0].parts == []


def _with_dag(build: Any) -> DAG:
    with DAG("bad", schedule=None, start_date=START) as d:
        build()
    return d


@task
def _up():
    return [1]


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (
            lambda: _up().map(_up),
            ValueError,
            "map() argument must be a plain function, not a @task",
        ),
        (lambda: _up().map(3), TypeError, "map() argument must be callable, not 'int'"),
        (lambda: _up()["other"].map(str), ValueError, "cannot map against non-return XCom"),
        (lambda: _up()["other"].zip(_up()), ValueError, "cannot map against non-return XCom"),
        (lambda: _up()["other"].concat(_up()), ValueError, "cannot concatenate non-return XCom"),
        (lambda: _up().zip([1, 2]), TypeError, "zip() takes upstream tasks' values (XComArg)"),
        (lambda: _up().concat("ab"), TypeError, "concat() takes upstream tasks' values"),
        (lambda: _up().map(str)["k"], TypeError, "cannot be subscripted"),
    ],
)
def test_bad_calls_fail_the_dag_file_with_airflows_message(
    build: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        _with_dag(build)
    assert message in str(raised.value)


def test_a_param_cannot_be_a_source() -> None:
    @dag(schedule=None, start_date=START, params={"p": [1]})
    def with_param(p=None):
        _up().zip(p)

    with pytest.raises(ValueError, match="zip\\(\\) cannot take the DAG param 'p'"):
        with_param()

    @dag(schedule=None, start_date=START, params={"p": [1]})
    def mapping_a_param(p=None):
        p.map(str)

    with pytest.raises(ValueError, match="cannot map over the DAG param 'p'"):
        mapping_a_param()


def test_a_value_that_is_not_a_list_fails_the_reading_try() -> None:
    d = _dag()
    mapped = d.tasks["mapped"].expand_value["v"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="XCom map expects sequence or dict, not int"):
        mapped.resolve(lambda t, k: 5)


# -- the scheduler: the number of instances from the values stored -------------------------


def _store_run(engine: Engine, values: dict[str, Any]) -> tuple[int, DagInfo]:
    data = serialize_dag(_dag(), Path("/tmp")).model_dump(mode="json", by_alias=True)
    insert_dag(engine, data)
    run_id = trigger(engine, "ops")
    with Session(engine) as session:
        for task_id, value in values.items():
            session.add(
                XCom(
                    dag_run_id=run_id,
                    task_id=task_id,
                    key="return_value",
                    map_index=-1,
                    value=encode(value),
                    timestamp=datetime.now(UTC),
                )
            )
        session.commit()
    return run_id, DagInfo(SerializedDag.model_validate(data))


def _expand(engine: Engine, run_id: int, info: DagInfo, task_id: str) -> list[int]:
    with Session(engine) as session:
        expand_mapped_task(session, run_id, info, task_id, max_length=1024, now=datetime.now(UTC))
        session.commit()
        return sorted(
            session.scalars(
                select(TaskInstance.map_index).where(
                    TaskInstance.dag_run_id == run_id, TaskInstance.task_id == task_id
                )
            )
        )


def test_the_scheduler_expands_from_the_lengths_of_every_source(engine: Engine) -> None:
    run_id, info = _store_run(engine, {"nums": [1, 2, 3, 4], "words": {"a": 1}, "more": [7, 8]})
    assert _expand(engine, run_id, info, "mapped") == [0, 1, 2, 3]  # map: its source's
    assert _expand(engine, run_id, info, "zipped") == [0]  # zip: the shortest
    assert _expand(engine, run_id, info, "zipped_fill") == [0, 1, 2, 3]  # the longest
    assert _expand(engine, run_id, info, "concatenated") == list(range(7))  # the sum
    assert _expand(engine, run_id, info, "crossed") == list(range(8))  # 4 x 2


def test_a_missing_source_value_makes_the_mapped_task_upstream_failed(engine: Engine) -> None:
    run_id, info = _store_run(engine, {"nums": [1, 2], "words": []})
    assert _expand(engine, run_id, info, "zipped") == [-1]  # zip with an empty part: 0
    assert _expand(engine, run_id, info, "concatenated") == [-1]  # "more" pushed nothing
    with Session(engine) as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_run_id == run_id, TaskInstance.map_index == -1
            )
        ).all()
    states = {task_id: state for task_id, state in rows}
    assert states["zipped"] == "skipped"
    assert states["concatenated"] == "upstream_failed"
