"""Accessibility smoke test of every UI page: axe-core (tests/support/axe, installed by
``make install``) injected through Playwright into headless Chromium, on a real
``ketch standalone`` with a DAG that has params and a task group, a finished run with a
failed task, a variable and a pool. No page may have a critical or serious violation (moderate and
minor findings are printed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.ketch_process import standalone_with_dag

AXE = Path(__file__).resolve().parents[1] / "support" / "axe" / "node_modules" / "axe-core"

DAG_FILE = """
from datetime import datetime, timezone

from ketch import Param, TaskGroup, dag, task


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    tags=["a11y"],
    params={"count": Param(2, type="integer", minimum=1), "mode": Param("fast", enum=["fast", "slow"])},
)
def a11y_demo():
    @task
    def extract():
        print("extracting")
        return {"rows": 3}

    @task(retries=0)
    def load(data):
        raise ValueError("the warehouse said no")

    with TaskGroup("prepare", tooltip="gets the rows"):
        rows = extract()
    load(rows)


a11y_demo()
"""


def _violations(page: Any) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE / "axe.min.js"))
    found: list[dict[str, Any]] = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"
    )
    return found


def test_no_page_has_a_critical_or_serious_accessibility_violation(
    ketch_home: Path, tmp_path: Path
) -> None:
    from tests.support.browser import chromium, new_page, screenshot

    assert (AXE / "axe.min.js").exists(), "run `make install` (npm ci in tests/support/axe)"
    with standalone_with_dag(ketch_home, tmp_path, "a11y.py", DAG_FILE, "a11y_demo") as api:
        run_id = api.trigger("a11y_demo")["dag_run_id"]
        api.wait_run_finished("a11y_demo", run_id, 90)
        assert api.http.put("/api/v1/variables/region", json={"value": "eu"}).status_code == 200
        assert api.http.put("/api/v1/pools/etl", json={"slots": 2}).status_code == 200
        conn = {"conn_type": "postgres", "host": "db", "password": "pw"}
        assert api.http.put("/api/v1/connections/warehouse", json=conn).status_code == 200
        base = api.http.base_url
        pages = [
            "/",
            "/dags",
            "/dags/a11y_demo",
            "/dags/a11y_demo/graph",
            "/dags/a11y_demo/source",
            f"/dags/a11y_demo/runs/{run_id}",
            f"/dags/a11y_demo/runs/{run_id}/tasks/load",
            "/variables",
            "/connections",
            "/pools",
            "/tokens",
            "/audit",
            "/health",
        ]
        report: dict[str, list[dict[str, Any]]] = {}
        with chromium() as browser:
            page = new_page(browser)
            for path in pages:
                page.goto(f"{base}{path}")
                page.wait_for_load_state("networkidle")
                if path == "/dags/a11y_demo":
                    page.get_by_text("Trigger a run").click()  # the form's fields too
                if path == "/connections":
                    page.get_by_text("Edit", exact=True).click()  # the edit form's fields
                report[path] = _violations(page)
                screenshot(page, "a11y_" + (path.strip("/").replace("/", "_") or "home")[:60])
    worst = {"critical", "serious"}
    minor = {p: [v for v in vs if v["impact"] not in worst] for p, vs in report.items()}
    print("minor accessibility findings:", json.dumps({p: v for p, v in minor.items() if v}))
    bad = {p: [v for v in vs if v["impact"] in worst] for p, vs in report.items()}
    assert not any(bad.values()), json.dumps(bad, indent=2)
