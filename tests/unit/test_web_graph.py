"""The graph view: the layout (columns by longest path, no overlaps, one edge per
dependency, task groups as boxes around exactly their tasks) and the page (states of a run, links, the table for screen readers)."""

from __future__ import annotations

import random
import re

import pytest
from sqlalchemy.orm import Session

from ketch.serialization import SerializedDag
from ketch.web.graph import NODE_HEIGHT, NODE_WIDTH, columns_of, layout
from tests.unit.test_operations import add_dag, serialized_chain
from tests.unit.test_web_pages import Web, _seed


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


def _grouped_dag(seed: int | None = None) -> SerializedDag:
    """start >> extract (a, b >> c, and inner (d >> e)) >> end, a group load beside it in
    the same columns, and a loose task beside both; with ``seed``, random extra edges."""
    from ketch import DAG, EmptyTask, TaskGroup
    from ketch.authoring.serialize import serialize_dag

    with DAG("grouped") as d:
        start, end, side = (EmptyTask(task_id=t) for t in ("start", "end", "side"))
        with TaskGroup("extract") as extract:
            EmptyTask(task_id="a")
            EmptyTask(task_id="b") >> EmptyTask(task_id="c")
            with TaskGroup("inner", tooltip="the <inner> part"):
                EmptyTask(task_id="d") >> EmptyTask(task_id="e")
        with TaskGroup("load") as load:
            EmptyTask(task_id="x") >> EmptyTask(task_id="y")
        start >> [extract, load, side]
        [extract, load] >> end
    if seed is not None:
        rng = random.Random(seed)
        order = list(d.tasks)  # definition order is topological here but for start/end
        for _ in range(4):
            up, down = rng.sample([t for t in order if t not in ("start", "end")], 2)
            if order.index(up) < order.index(down):
                d.tasks[up] >> d.tasks[down]
    return serialize_dag(d, "/dags")


def _inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    x, y, w, h = inner
    ox, oy, ow, oh = outer
    return ox <= x and oy <= y and x + w <= ox + ow and y + h <= oy + oh


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.parametrize("seed", [None, 1, 2, 3, 4, 5])
def test_a_group_box_contains_exactly_its_tasks_and_nested_boxes_nest(seed: int | None) -> None:
    dag = _grouped_dag(seed)
    graph = layout(dag)
    boxes = {g.group_id: (g.x, g.y, g.width, g.height) for g in graph.groups}
    assert set(boxes) == {"extract", "extract.inner", "load"}
    nodes = {n.task_id: (n.x, n.y, NODE_WIDTH, NODE_HEIGHT) for n in graph.nodes}
    assert len(set(nodes.values())) == len(nodes)  # no two tasks on the same spot
    for group_id, box in boxes.items():
        members = {t for t in dag.tasks if group_id in dag.task_group_path(t)}
        assert {t for t, node in nodes.items() if _inside(node, box)} == members
        assert not any(_overlaps(nodes[t], box) for t in set(nodes) - members)
        assert box[0] >= 0 and box[1] >= 0
        assert box[0] + box[2] <= graph.width and box[1] + box[3] <= graph.height
    inner, outer = boxes["extract.inner"], boxes["extract"]
    assert _inside(inner, outer) and inner != outer
    assert inner[0] > outer[0] and inner[0] + inner[2] < outer[0] + outer[2]  # strictly
    assert not _overlaps(boxes["load"], boxes["extract"])
    drawn = [g.group_id for g in graph.groups]
    assert drawn.index("extract") < drawn.index("extract.inner")  # outer first, inner on top


def test_tasks_in_a_group_show_their_label_without_the_group_prefix() -> None:
    graph = layout(_grouped_dag())
    labels = {n.task_id: n.label for n in graph.nodes}
    assert labels["extract.inner.d"] == "d" and labels["load.x"] == "x"
    assert labels["start"] == "start"
    groups = {n.task_id: n.task_group_id for n in graph.nodes}
    assert groups["extract.inner.d"] == "extract.inner" and groups["start"] is None
    assert {g.group_id: g.label for g in graph.groups}["extract.inner"] == "inner"


def test_graph_page_draws_task_groups(web: Web) -> None:
    with Session(web.engine) as session:
        add_dag(session, _grouped_dag())
        session.commit()
    response = web.get("/dags/grouped/graph")
    assert response.status_code == 200, response.text
    text = response.text
    assert re.findall(r'class="group" data-group-id="([a-z.]+)"', text) == [
        "extract",
        "load",
        "extract.inner",
    ]
    assert "Task group extract.inner: the &lt;inner&gt; part</title>" in text
    assert ">inner</text>" in text and ">d</text>" in text
    assert '<th scope="row">extract.inner.d</th><td>extract.inner</td>' in text
    assert "in 3 task groups" in text
