"""Headless Chromium for UI tests: Debian's /usr/bin/chromium driven by Playwright.

Never ``playwright install`` (its browser downloads fail on these machines);
``scripts/install-system-deps`` installs Debian's ``chromium``. Typical use:

    with chromium() as browser:
        page = new_page(browser, block_hosts=FONT_HOSTS)
        page.goto(url)

Pages get no access to the internet: :func:`new_page` aborts every request to the
hosts given (web fonts the OpenID provider's dev pages import), and a screenshot
helper saves to ``tests/artifacts/`` (gitignored) for a look after a failure.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def chromium_path() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    found = shutil.which("chromium")
    if found is None:
        raise RuntimeError(
            "Chromium is not installed: run scripts/install-system-deps (Debian's chromium "
            "package); never `playwright install`"
        )
    return Path(found)


@contextmanager
def chromium(*, headless: bool = True) -> Iterator[Browser]:
    """A headless Chromium (Debian's) for the duration of the block."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium_path()), args=CHROMIUM_ARGS, headless=headless
        )
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser, *, block_hosts: Iterable[str] = ()) -> Page:
    """A page in a fresh context (its own cookies), requests to ``block_hosts`` aborted."""
    context = browser.new_context()
    hosts = [re.escape(h) for h in block_hosts]
    if hosts:
        pattern = re.compile(rf"^[a-z]+://({'|'.join(hosts)})(:\d+)?(/|$)")
        context.route(pattern, lambda route: route.abort())
    context.set_default_timeout(15_000)
    return context.new_page()


def screenshot(page: Page, name: str, folder: Path | None = None) -> Path:
    """Save a full-page screenshot as ``<folder or tests/artifacts>/<name>.png``."""
    target = (folder or ARTIFACTS) / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    return target
