"""The graph view: the layout (columns by longest path, no overlaps, one edge per
dependency) and the page (states of a run, links, the table for screen readers)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from ketch.serialization import SerializedDag
from ketch.web.graph import NODE_HEIGHT, NODE_WIDTH, columns_of, layout
from tests.unit.test_operations import serialized_chain
from tests.unit.test_web_pages import Web, _seed, _web


@pytest.fixture
def web(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    yield from _web(sqlite_engine, monkeypatch)


def _dag(edges: dict[str, list[str]]) -> SerializedDag:
    """A DAG from ``{task: [downstream...]}``, tasks defined in the dict's order."""
    ups: dict[str, list[str]] = {t: [] for t in edges}
    for up, downs in edges.items():
        for down in downs:
            ups[down].append(up)
    return SerializedDag.model_validate(
        {
            "dag_id": "g",
            "fileloc": "/dags/g.py",
            "relative_fileloc": "g.py",
            "schedule": {"kind": "none"},
            "tasks": {
                t: {
                    "task_id": t,
                    "kind": "python",
                    "upstream_task_ids": ups[t],
                    "downstream_task_ids": downs,
                }
                for t, downs in edges.items()
            },
        }
    )


def test_columns_are_the_longest_path_even_out_of_definition_order() -> None:
    # "end" is defined first; "b" is reachable in one step from "a" and in two via "mid".
    dag = _dag({"end": [], "a": ["mid", "b"], "mid": ["b"], "b": ["end"]})
    assert columns_of(dag) == {"a": 0, "mid": 1, "b": 2, "end": 3}


def test_layout_has_no_overlapping_boxes_and_one_edge_per_dependency() -> None:
    fan = {"start": [f"t{n}" for n in range(30)], **{f"t{n}": ["join"] for n in range(30)}}
    dag = _dag({**fan, "join": []})
    graph = layout(dag)
    assert len(graph.nodes) == 32 and len(graph.edges) == 60
    boxes = {(n.x, n.y) for n in graph.nodes}
    assert len(boxes) == 32  # no two tasks on the same spot
    for node in graph.nodes:
        assert node.x >= 0 and node.x + NODE_WIDTH <= graph.width
        assert node.y >= 0 and node.y + NODE_HEIGHT <= graph.height
    xs = {n.task_id: n.x for n in graph.nodes}
    assert xs["start"] < xs["t0"] == xs["t29"] < xs["join"]


def test_a_long_task_id_is_cut_in_its_box_but_kept_whole_in_its_tooltip(web: Web) -> None:
    graph = layout(_dag({"a_very_long_task_id_that_does_not_fit_in_a_box": []}))
    assert graph.nodes[0].label.endswith("…") and len(graph.nodes[0].label) == 24


def test_graph_page_colours_tasks_by_the_latest_run(web: Web) -> None:
    _seed(web.engine)
    response = web.get("/dags/etl/graph")
    assert response.status_code == 200, response.text
    text = response.text
    states = dict(re.findall(r'data-task-id="([a-z]+)" data-state="([a-z_]+)"', text))
    # _seed's newest run is run_two (by run_after, then id)
    assert states == {
        "extract": "success",
        "transform": "running",
        "load": "none",
        "report": "up_for_retry",
    }
    assert 'href="/dags/etl/runs/run_two/tasks/transform"' in text
    assert text.count('class="edge"') == 3  # extract>>transform, extract>>report, transform>>load
    assert '<th scope="row">load</th>' in text  # the table beside the image
    one = web.get("/dags/etl/graph?run_id=run_one").text
    assert 'data-task-id="transform" data-state="failed"' in one
    assert web.get("/dags/etl/graph?run_id=nope").status_code == 404
    assert web.get("/dags/nope/graph").status_code == 404
    assert 'href="/dags/etl/graph"' in web.get("/dags/etl").text


def test_graph_of_a_dag_without_runs(web: Web) -> None:
    _seed(web.engine)
    text = web.get("/dags/quiet/graph").text
    assert "No runs yet" in text and 'href="/dags/quiet/runs/' not in text
    assert serialized_chain("quiet").tasks.keys() == set(
        re.findall(r'data-task-id="([a-z]+)"', text)
    )
