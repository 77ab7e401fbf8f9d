"""The run page and the run / task actions of the UI: what each role sees, and that each
form's request (its URL, its body and its checkboxes, as ``static/ketch.js`` builds
them) is one the REST API accepts and acts on. The browser side is in
tests/integration/test_web_ui.py."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.db.models import DagRun, TaskInstance, TaskInstanceTry, XCom
from tests.unit.test_operations import NOW
from tests.unit.test_web_pages import ROLES, Web, _seed


def _forms(text: str) -> list[dict[str, Any]]:
    """Each action form of a page: method, url, body and its checkboxes (field, checked)."""
    forms = []
    for match in re.finditer(r'<form class="api-action"(.*?)</form>', text, re.S):
        head, inner = match.group(1), match.group(0)
        attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', head.split(">", 1)[0]))
        attrs.update(dict(re.findall(r"data-([a-z]+)='([^']*)'", head.split(">", 1)[0])))
        boxes = re.findall(r'<input type="checkbox" data-field="([a-z_]+)"( checked)?>', inner)
        forms.append(
            {
                "method": attrs["method"],
                "url": html.unescape(attrs["url"]),
                "body": json.loads(html.unescape(attrs["body"])),
                "preview": attrs.get("preview") == "true",
                "boxes": {field: bool(checked) for field, checked in boxes},
            }
        )
    return forms


def _send(web: Web, form: dict[str, Any], role: str = "user", **ticked: bool) -> Any:
    """The request ketch.js sends for ``form`` with its checkboxes as given (default: as
    the page draws them)."""
    body = {**form["body"], **form["boxes"], **ticked}
    return web.send(form["method"], form["url"], role, body)


def _ti_states(engine: Engine, run_id: str) -> dict[str, str | None]:
    with Session(engine) as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(TaskInstance.run_id == run_id)
        )
        return {task_id: state for task_id, state in rows}


# ------------------------------------------------------------------ the run page


def test_run_page_lists_the_task_instances_in_dag_order(web_both: Web) -> None:
    web = web_both
    _seed(web.engine)
    response = web.get("/dags/etl/runs/run_one")
    assert response.status_code == 200, response.text
    text = response.text
    assert 'data-testid="run-state">failed<' in text
    order = re.findall(r'<a href="/dags/etl/runs/run_one/tasks/([a-z]+)">', text)
    assert order == ["extract", "transform", "load", "report"]
    assert '<span data-task-state="transform">failed</span>' in text
    assert "<code>boom</code>" in text  # the failed task's error
    assert "none (manual run)" in text and '<pre class="conf">{}</pre>' in text
    assert web.get("/dags/etl/runs/nope").status_code == 404
    assert web.get("/dags/nope/runs/run_one").status_code == 404


def test_grid_columns_link_to_their_run_page(web: Web) -> None:
    _seed(web.engine)
    text = web.get("/dags/etl").text
    assert 'href="/dags/etl/runs/run_one" title="run_one: failed"' in text
    assert 'href="/dags/etl/runs/run_two" title="run_two: running"' in text


@pytest.mark.parametrize("role", ROLES)
def test_actions_only_for_roles_the_api_allows(web: Web, role: str) -> None:
    _seed(web.engine)
    allowed = role != "viewer"  # marking and clearing need "user" (ketch.auth.policy)
    for path in ("/dags/etl/runs/run_one", "/dags/etl/runs/run_one/tasks/transform"):
        forms = _forms(web.get(path, role=role).text)
        assert bool(forms) is allowed, (role, path)


def test_a_viewer_sending_a_form_anyway_gets_403(web: Web) -> None:
    _seed(web.engine)
    for form in _forms(web.get("/dags/etl/runs/run_one", role="user").text):
        assert _send(web, form, role="viewer").status_code == 403
    assert _ti_states(web.engine, "run_one")["transform"] == "failed"


# ------------------------------------------------------------------ the forms' requests


def test_clear_run_previews_then_clears_only_the_failed(web_both: Web) -> None:
    web = web_both
    _seed(web.engine)
    (clear,) = [
        f for f in _forms(web.get("/dags/etl/runs/run_one", role="user").text) if f["preview"]
    ]
    assert clear["boxes"] == {"only_failed": False}

    preview = _send(web, clear, only_failed=True, dry_run=True)
    assert preview.status_code == 200, preview.text
    listed = sorted(ti["task_id"] for ti in preview.json()["task_instances"])
    assert listed == ["load", "transform"]  # failed and upstream_failed
    assert _ti_states(web.engine, "run_one")["transform"] == "failed"  # a dry run

    done = _send(web, clear, only_failed=True, dry_run=False)
    assert done.status_code == 200, done.text
    states = _ti_states(web.engine, "run_one")
    assert states == {"extract": "success", "transform": None, "load": None, "report": "success"}


def test_mark_run_failed_cancels_it(web: Web) -> None:
    _seed(web.engine)
    forms = _forms(web.get("/dags/etl/runs/run_two", role="user").text)
    (failed,) = [f for f in forms if f["body"] == {"state": "failed"}]
    answer = _send(web, failed)
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "failed"
    states = _ti_states(web.engine, "run_two")
    assert states["transform"] == "failed"  # was running
    assert states["load"] == "skipped"  # had not started


def test_task_clear_with_downstream_by_default(web: Web) -> None:
    _seed(web.engine)
    text = web.get("/dags/etl/runs/run_one/tasks/transform", role="user").text
    (clear,) = [f for f in _forms(text) if f["preview"]]
    assert clear["body"] == {"dag_run_id": "run_one", "task_ids": ["transform"]}
    assert clear["boxes"] == {
        "include_downstream": True,
        "include_upstream": False,
        "only_failed": False,
    }
    preview = _send(web, clear, dry_run=True)
    assert sorted(ti["task_id"] for ti in preview.json()["task_instances"]) == ["load", "transform"]
    assert _send(web, clear, dry_run=False).status_code == 200
    assert _ti_states(web.engine, "run_one")["load"] is None


def test_task_mark_success_with_downstream(web: Web) -> None:
    _seed(web.engine)
    text = web.get("/dags/etl/runs/run_one/tasks/transform", role="user").text
    (mark,) = [f for f in _forms(text) if f["body"] == {"new_state": "success"}]
    assert mark["boxes"] == {"include_downstream": False, "include_upstream": False}
    answer = _send(web, mark, include_downstream=True)
    assert answer.status_code == 200, answer.text
    states = _ti_states(web.engine, "run_one")
    assert (states["transform"], states["load"]) == ("success", "success")


# ------------------------------------------------------------------ the try page's facts


def _add_return_value(engine: Engine, value: object) -> None:
    with Session(engine) as session:
        run = session.scalars(select(DagRun).where(DagRun.run_id == "run_one")).one()
        session.add(
            XCom(
                dag_run_id=run.id, task_id="extract", key="return_value", value=value, timestamp=NOW
            )
        )
        session.commit()


def test_try_page_shows_the_return_value_and_rendered_fields(web_both: Web) -> None:
    web = web_both
    _seed(web.engine)
    _add_return_value(web.engine, {"rows": 3, "name": "<b>x</b>"})
    with Session(web.engine) as session:
        ti = session.scalars(
            select(TaskInstance).where(
                TaskInstance.run_id == "run_one", TaskInstance.task_id == "extract"
            )
        ).one()
        row = session.scalars(
            select(TaskInstanceTry).where(TaskInstanceTry.task_instance_id == ti.id)
        ).one()
        row.rendered_fields = {"bash_command": "echo 2026-01-01", "env": {"A": "1"}}
        session.commit()
    text = web.get("/dags/etl/runs/run_one/tasks/extract").text
    value = re.search(r'<pre class="xcom" data-testid="return-value">(.*?)</pre>', text, re.S)
    assert value is not None
    assert json.loads(html.unescape(value.group(1))) == {"name": "<b>x</b>", "rows": 3}
    assert "<b>x</b>" not in text  # escaped, never markup
    assert "<dt>bash_command</dt><dd><pre>echo 2026-01-01</pre></dd>" in text
    assert '"A": "1"' in html.unescape(text)

    plain = web.get("/dags/etl/runs/run_one/tasks/transform").text
    assert '<span class="muted">none</span>' in plain and "Rendered templates" not in plain


def test_a_long_return_value_is_cut(web: Web) -> None:
    _seed(web.engine)
    _add_return_value(web.engine, ["x" * 100] * 100)
    text = web.get("/dags/etl/runs/run_one/tasks/extract").text
    assert "(cut: the whole value is in the XCom API)" in text


# ------------------------------------------------------------------ mapped task instances


def _mapped_run(engine: Engine, instances: int) -> None:
    """A DAG ``mapped`` (produce >> work, work mapped over produce's list) and a run where
    ``work`` has ``instances`` instances, the last one failed."""
    from ketch.db.models import DagRun as Run
    from ketch.serialization import SerializedDag
    from tests.unit.test_operations import add_dag, add_run

    dag = SerializedDag.model_validate(
        {
            "dag_id": "mapped",
            "fileloc": "/dags/mapped.py",
            "relative_fileloc": "mapped.py",
            "schedule": {"kind": "none"},
            "tasks": {
                "produce": {
                    "task_id": "produce",
                    "kind": "python",
                    "downstream_task_ids": ["work"],
                },
                "work": {
                    "task_id": "work",
                    "kind": "python",
                    "upstream_task_ids": ["produce"],
                    "expand": {
                        "kind": "dict_of_lists",
                        "args": [{"name": "x", "xcom_task_id": "produce"}],
                    },
                },
            },
        }
    )
    with Session(engine) as session:
        model = add_dag(session, dag)
        add_run(session, model, "m1", {"produce": "success"}, run_state="failed")
        run = session.scalars(select(Run).where(Run.run_id == "m1")).one()
        session.add_all(
            TaskInstance(
                dag_run_id=run.id,
                dag_id="mapped",
                run_id="m1",
                task_id="work",
                map_index=i,
                state="failed" if i == instances - 1 else "success",
                try_number=1,
                max_tries=0,
                error="boom at the end" if i == instances - 1 else None,
            )
            for i in range(instances)
        )
        session.commit()


def test_a_run_of_1000_mapped_instances_on_every_page(web_both: Web) -> None:
    web = web_both
    _mapped_run(web.engine, 1000)
    grid = web.get("/dags/mapped").text
    cell = re.search(
        r'<a id="c\d+-2" class="sq state-(\w+)" data-state="(\w+)" data-task-id="work"', grid
    )
    assert cell is not None and cell.group(2) == "failed"  # one cell for the 1,000 instances
    assert "(1000 mapped instances)" in grid
    listing = web.get("/dags/mapped/runs/m1/tasks/work")  # no map_index: the instances
    assert listing.status_code == 200, listing.text
    assert listing.text.count('<a href="?map_index=') == 1000
    assert '<span data-instance-state="999">failed</span>' in listing.text
    one = web.get("/dags/mapped/runs/m1/tasks/work?map_index=999")
    assert one.status_code == 200, one.text
    assert '<span class="muted">[999]</span>' in one.text
    assert 'data-testid="ti-error">boom at the end<' in one.text
    assert "/taskInstances/work/logs/1?map_index=999" in one.text
    assert web.get("/dags/mapped/runs/m1/tasks/work?map_index=1000").status_code == 404
    run_page = web.get("/dags/mapped/runs/m1").text
    assert run_page.count("/tasks/work?map_index=") == 1000
    graph = web.get("/dags/mapped/graph?run_id=m1").text
    assert 'data-task-id="work" data-state="failed"' in graph


def test_one_mapped_instance_is_marked_on_its_own(web: Web) -> None:
    _mapped_run(web.engine, 3)
    text = web.get("/dags/mapped/runs/m1/tasks/work?map_index=2", role="user").text
    (mark,) = [f for f in _forms(text) if f["body"] == {"new_state": "success"}]
    assert mark["url"] == "/api/v1/dags/mapped/dagRuns/m1/taskInstances/work/2"
    answer = _send(web, mark)
    assert answer.status_code == 200, answer.text
    with Session(web.engine) as session:
        rows = session.execute(
            select(TaskInstance.map_index, TaskInstance.state).where(TaskInstance.task_id == "work")
        )
        states = {map_index: state for map_index, state in rows}
    assert states == {0: "success", 1: "success", 2: "success"}
    assert (
        '<form class="api-action"'
        not in web.get("/dags/mapped/runs/m1/tasks/work?map_index=2", role="viewer").text
    )
