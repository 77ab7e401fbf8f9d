"""Connections edited in the UI, end to end: headless Chromium on a real ``ketch
standalone`` (loopback admin). Add a connection with a password through the form, edit
its host with the password field left blank (the password stays: ketch.js's PATCH names
only the fields it sends), replace the password, then delete it. The page never holds
the password; what tasks would read is checked in the database."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from ketch.authoring.connection import Connection
from ketch.config import get_settings
from ketch.variables import store
from tests.support.ketch_process import standalone_with_dag

DAG_FILE = """
from datetime import datetime, timezone

from ketch import dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
def conn_demo():
    @task
    def noop():
        pass

    noop()


conn_demo()
"""
FIRST = "first-pass-w0rd"
SECOND = "second-pass-w0rd"


def _stored(home: Path, conn_id: str) -> Connection | None:
    engine = create_engine(f"sqlite:///{home / 'e2e.db'}")
    try:
        with Session(engine) as session:
            return store.get_connection(session, get_settings(), conn_id)
    except store.ConnectionNotFound:
        return None
    finally:
        engine.dispose()


def test_add_edit_keep_the_password_and_delete_a_connection(
    ketch_home: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    from tests.support.browser import chromium, new_page, screenshot

    with standalone_with_dag(ketch_home, tmp_path, "c.py", DAG_FILE, "conn_demo") as api:
        base = api.http.base_url
        with chromium() as browser:
            page = new_page(browser)
            page.goto(f"{base}/connections")
            page.fill("#add-id", "warehouse")
            page.fill("#add-type", "postgres")
            page.fill("#add-host", "db.corp")
            page.fill("#add-port", "5432")
            page.fill("#add-password", FIRST)
            page.fill("#add-extra", '{"sslmode": "require", "api_token": "tok-1"}')
            page.get_by_role("button", name="Add", exact=True).click()
            page.get_by_text("Added.").wait_for()
            row = page.locator('tr[data-conn-id="warehouse"]')
            row.wait_for()  # the page reloads once done
            assert FIRST not in page.content() and "tok-1" not in page.content()
            stored = _stored(ketch_home, "warehouse")
            assert stored is not None and (stored.password, stored.port) == (FIRST, 5432)

            # Edit the host, password left blank, extra sent back as shown (with ***).
            row.get_by_text("Edit").click()
            row.locator("[data-text-field=host]").fill("db2.corp")
            row.get_by_role("button", name="Save").click()
            row.get_by_text("Saved warehouse.").wait_for()
            page.locator('tr[data-conn-id="warehouse"] td', has_text="db2.corp").wait_for()
            stored = _stored(ketch_home, "warehouse")
            assert stored is not None
            assert (stored.host, stored.password, stored.port) == ("db2.corp", FIRST, 5432)
            assert stored.extra is not None and "tok-1" in stored.extra
            screenshot(page, "connections_edited")

            # A new password typed in: replaced; the port emptied: cleared.
            row = page.locator('tr[data-conn-id="warehouse"]')
            row.get_by_text("Edit").click()
            row.locator("[data-text-field=password]").fill(SECOND)
            row.locator("[data-text-field=port]").fill("")
            row.get_by_role("button", name="Save").click()
            row.get_by_text("Saved warehouse.").wait_for()
            port_cell = page.locator('tr[data-conn-id="warehouse"] td').nth(2)
            expect(port_cell).to_have_text("")  # reloaded: the port is gone
            stored = _stored(ketch_home, "warehouse")
            assert stored is not None and (stored.password, stored.port) == (SECOND, None)
            assert SECOND not in page.content()

            page.get_by_role("button", name="Delete warehouse").click()
            page.get_by_text("No connections yet.").wait_for()
            assert _stored(ketch_home, "warehouse") is None
