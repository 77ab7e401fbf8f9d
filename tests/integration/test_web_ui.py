"""The web UI end to end: headless Chromium (Debian's) signed in through the test OpenID
Connect provider, against a real ``ketch standalone`` (scheduler, local executor, web).

One journey: the DAGs list, a DAG's page, a trigger refused inline by the params'
schema, a trigger that runs, the grid turning green without a reload, the log page
of a task showing the line it printed, a clear (previewed, then done) that reruns the
task, and the run marked failed from its run page. Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.ketch_process import KetchEnv, running, wait_for
from tests.support.oidc_provider import (
    FONT_HOSTS,
    OidcClient,
    OidcProvider,
    google_claims,
    oidc_provider,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

CLIENT_ID = "ketch-web-ui"
CLIENT_SECRET = "ketch-web-ui-secret-for-tests"
PRINTED = "hello from the web UI test"
PRINTED_LATER = "still here after a while"

DAG_FILE = f'''
import time
from datetime import datetime, timezone

from ketch import Param, dag, get_current_context, task


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    tags=["ui"],
    params={{"count": Param(2, type="integer", minimum=1)}},
)
def web_ui_demo():
    @task
    def hello():
        print("{PRINTED}", get_current_context()["params"]["count"], flush=True)
        time.sleep(4)
        print("{PRINTED_LATER}")

    @task
    def done():
        print("done")

    hello() >> done()


web_ui_demo()
'''


def sign_in(page: Page, start: str, login: str) -> None:
    """Open ``start``; sign in at the provider (its dev login takes any password)."""
    app_host = start.split("/", 3)[2]
    page.goto(start)
    page.wait_for_url(lambda u: "/interaction/" in u and app_host not in u)  # at the provider
    page.fill('input[name="login"]', login)
    page.fill('input[name="password"]', "anything")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(start)


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    accounts = {
        "alice@corp.com": google_claims("alice@corp.com", hd="corp.com"),
        "frank@corp.com": google_claims("frank@corp.com", hd="corp.com"),
    }
    with oidc_provider(accounts) as running_provider:
        yield running_provider


def test_trigger_watch_the_grid_and_read_the_log(
    provider: OidcProvider, ketch_home: Path, tmp_path: Path
) -> None:
    from tests.support.browser import chromium, new_page, screenshot

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "web_ui_demo.py").write_text(DAG_FILE)
    env = KetchEnv(
        home=ketch_home,
        db_url=f"sqlite:///{ketch_home / 'ketch.db'}",
        dags_folder=dags,
        extra={
            "KETCH__AUTH__OIDC_ISSUER": provider.issuer,
            "KETCH__AUTH__OIDC_CLIENT_ID": CLIENT_ID,
            "KETCH__AUTH__OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "KETCH__AUTH__ALLOWED_DOMAINS": json.dumps(["corp.com"]),
            "KETCH__AUTH__ROLE_RULES": json.dumps(
                [
                    {"email": "alice@corp.com", "role": "op"},
                    {"domain": "corp.com", "role": "viewer"},
                ]
            ),
        },
    )
    url = f"http://localhost:{env.port}"  # another site than the provider's 127.0.0.1
    provider.set_clients([OidcClient(CLIENT_ID, CLIENT_SECRET, [f"{url}/oauth2callback"])])
    with running(env, "standalone"), chromium() as browser:
        page = new_page(browser, block_hosts=FONT_HOSTS)

        def web_up() -> bool:
            try:
                return page.request.get(f"{url}/api/v1/health").ok
            except Exception:
                return False

        wait_for(web_up, 60, 0.1, "the web server")

        # Sign in (the provider's dev login accepts any password), back on the DAGs list.
        sign_in(page, f"{url}/dags", "alice@corp.com")

        row = page.locator('tr[data-dag-id="web_ui_demo"]')
        deadline = time.monotonic() + 30
        while not row.count():  # the scheduler's DAG processor parses the file
            assert time.monotonic() < deadline, "the DAG never appeared in the list"
            page.wait_for_timeout(250)
            page.reload()
        # Pause and unpause through the REST API (the button sends the CSRF header).
        row.get_by_role("button", name="Pause web_ui_demo", exact=True).click()
        row.get_by_role("button", name="Unpause web_ui_demo", exact=True).wait_for()
        assert row.locator(".paused-state").inner_text() == "Paused"
        row.get_by_role("button", name="Unpause web_ui_demo", exact=True).click()
        row.get_by_role("button", name="Pause web_ui_demo", exact=True).wait_for()
        assert row.locator(".paused-state").inner_text() == "Active"
        screenshot(page, "web_ui_1_dags")

        row.get_by_role("link", name="web_ui_demo").click()
        page.wait_for_url(f"{url}/dags/web_ui_demo")
        page.evaluate("window.__sameDocument = true")  # gone if the page reloads

        # A value the params' schema refuses: the API's 422 shown next to the field.
        page.get_by_text("Trigger a run").click()
        count = page.get_by_label("count")
        count.fill("0")
        page.get_by_role("button", name="Trigger", exact=True).click()
        error = page.locator('.error[data-param="count"]')
        error.wait_for(state="visible")
        assert "minimum of 1" in error.inner_text()
        assert count.get_attribute("aria-invalid") == "true"
        screenshot(page, "web_ui_2_invalid_param")

        count.fill("3")
        page.get_by_role("button", name="Trigger", exact=True).click()
        page.get_by_text("Triggered run manual__").wait_for()
        # Refreshed at once after the trigger: the new run's cells before they are done.
        page.locator('#grid a[data-task-id="done"]:not([data-state="success"])').wait_for(
            timeout=5_000
        )
        # The grid refreshes itself (htmx, every 2 s while a run is active).
        hello = page.locator('#grid a[data-task-id="hello"][data-state="running"]')
        hello.wait_for(timeout=20_000)
        # Keyboard focus on a cell survives the grid's redraws (htmx restores it by id).
        done_cell = page.locator('#grid a[data-task-id="done"]').last
        done_cell.focus()
        focused = page.evaluate("document.activeElement.id")
        assert focused and page.evaluate("document.activeElement.dataset.state") != "success"

        # Meanwhile, in another tab: the running try's log, followed live.
        live = page.context.new_page()
        live.goto(url + str(hello.get_attribute("href")))
        assert live.get_by_test_id("ti-state").inner_text() == "running"
        live.locator("#log").get_by_text(f"{PRINTED} 3").wait_for()
        live.locator("#log").get_by_text(PRINTED_LATER).wait_for(timeout=20_000)
        live.get_by_text("End of the log: the try is success.").wait_for()
        assert live.get_by_test_id("ti-state").inner_text() == "success"  # updated in place
        screenshot(live, "web_ui_4_live_log")
        live.close()

        for task_id in ("hello", "done"):
            page.locator(f'#grid a[data-task-id="{task_id}"][data-state="success"]').wait_for(
                timeout=40_000
            )
        # The run itself ends a moment after its last task (the scheduler's reaction).
        page.locator('#grid thead .sq[data-state="success"]').wait_for(timeout=10_000)
        page.locator("#grid-status", has_text=": success, 2 of 2 tasks finished").wait_for()
        assert page.evaluate("window.__sameDocument") is True  # no reload happened
        page.bring_to_front()
        assert page.evaluate("document.activeElement.id") == focused
        assert page.evaluate("document.activeElement.dataset.state") == "success"
        screenshot(page, "web_ui_3_grid_success")

        page.locator('#grid a[data-task-id="hello"]').first.click()
        page.wait_for_url(f"{url}/dags/web_ui_demo/runs/**/tasks/hello")
        page.locator("#log").get_by_text(f"{PRINTED} 3").wait_for()  # a finished try's log
        page.get_by_text("End of the log: the try is success.").wait_for()
        download = page.get_by_role("link", name="Download the log").get_attribute("href")
        assert download is not None
        got = page.request.get(url + download)
        assert got.ok and PRINTED_LATER in got.text()
        assert "attachment" in got.headers["content-disposition"]
        # Find in the log: the matching line is marked, and its number links to it.
        page.get_by_label("Find in the log").fill("still HERE")
        page.locator("#log-matches", has_text="1 line").wait_for()
        match = page.locator("#log .line.match")
        assert match.count() == 1 and PRINTED_LATER in match.inner_text()
        page.get_by_label("Find in the log").press("Enter")
        page.locator("#log-matches", has_text="1 of 1 line").wait_for()
        line_id = match.get_attribute("id")
        match.locator("a.ln").click()
        assert page.url.endswith(f"#{line_id}")
        page.reload()  # a line link opens the page at that line, marked
        page.locator(f"#log #{line_id}.linked").wait_for()
        screenshot(page, "web_ui_5_log")

        # Clear the task (with its downstream): a dry run lists both, a second press
        # clears them, and the task runs again (a second try).
        clear = page.locator("form.api-action", has_text="Clear")
        clear.get_by_role("button", name="Clear", exact=True).click()
        clear.get_by_text("2 task instances will be cleared").wait_for()
        assert sorted(clear.locator(".preview li").all_inner_texts()) == [
            "done (success)",
            "hello (success)",
        ]
        screenshot(page, "web_ui_7_clear_preview")
        clear.get_by_role("button", name="Clear these 2").click()
        page.get_by_text("Cleared: the tasks will run again.").wait_for()
        deadline = time.monotonic() + 40
        while page.locator('a[href="?try=2"]').count() == 0:  # the page reloads itself
            assert time.monotonic() < deadline, "the cleared task never ran again"
            page.wait_for_timeout(500)
            page.reload()

        # Mark the run failed while its task runs again: the try is stopped.
        page.get_by_role("link", name="All tasks of this run").click()
        page.wait_for_url(f"{url}/dags/web_ui_demo/runs/*")
        page.get_by_role("button", name="Mark run failed (cancel)").click()
        page.get_by_text("The run is marked failed").wait_for()
        deadline = time.monotonic() + 30
        while page.get_by_test_id("run-state").inner_text() != "failed":
            assert time.monotonic() < deadline, "the run was never marked failed"
            page.wait_for_timeout(500)
            page.reload()
        screenshot(page, "web_ui_8_run_failed")

        # The graph of the DAG, coloured by that run: hello failed (cancelled), done skipped.
        page.goto(f"{url}/dags/web_ui_demo/graph")
        page.locator('svg a.node[data-task-id="hello"][data-state="failed"]').wait_for()
        assert page.locator('svg a.node[data-task-id="done"]').get_attribute("data-state") == (
            "skipped"
        )
        screenshot(page, "web_ui_9_graph")

        # A viewer (another browser context) sees no action, and the API refuses one anyway.
        viewer = new_page(browser, block_hosts=FONT_HOSTS)
        sign_in(viewer, f"{url}/dags/web_ui_demo", "frank@corp.com")
        assert "(viewer)" in viewer.locator("header").inner_text()
        assert viewer.locator("main button").count() == 0
        assert viewer.locator("#trigger-form").count() == 0
        viewer.locator('#grid a[data-task-id="hello"]').first.wait_for()
        status = viewer.evaluate(
            """async () => (await fetch("/api/v1/dags/web_ui_demo/dagRuns", {
                method: "POST",
                headers: {"Content-Type": "application/json", "X-CSRF-Token":
                    document.querySelector('meta[name="csrf-token"]').content},
                body: JSON.stringify({conf: {}}),
            })).status"""
        )
        assert status == 403
        screenshot(viewer, "web_ui_6_viewer")
        viewer.locator("#grid thead a.sq").first.click()  # a run's page: no actions either
        viewer.wait_for_url(f"{url}/dags/web_ui_demo/runs/*")
        viewer.get_by_test_id("run-state").wait_for()
        assert viewer.locator("main button, main form").count() == 0
