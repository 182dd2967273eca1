"""Headless Debian Chromium for the Playwright tests (app and ComfyUI frontend): one place for path and flags, and
one browser per test module (`chromium`, imported into tests/conftest.py) that the module opens its pages in."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ICTHP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def launch_chromium(playwright, **kwargs):
    """Launch the Debian Chromium through Playwright; fail with the set-up command when it is missing."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run tests/app/setup_browser.sh (Debian chromium) first")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, **kwargs)


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    """One headless Chromium per module (`chromium.new_page()` for a fresh context). Module scope, not session: while
    Playwright's sync API is open it keeps an event loop running in the main thread, and every later test that calls
    `asyncio.run()` would fail ("cannot be called from a running event loop")."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p, timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()
