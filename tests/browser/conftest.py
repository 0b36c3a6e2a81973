"""Headless Chromium (Debian's ``chromium``, driven by Playwright) against the session's local stack.

Playwright's own browser download does not work here (no internet but the package registries), so the browser is
the system's: ``make test`` installs it when missing (``make chromium``), and ``CHROMIUM`` names another binary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this folder is marked ``browser`` (``-m "not browser"`` leaves them out)."""
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.browser)


SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "console"


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no chromium on PATH: `make chromium` installs Debian's (make test does it first)", pytrace=False)
    return found


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One Chromium for this folder's tests, closed (with Playwright's event loop) before the next folder's run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, stack) -> Iterator[Any]:
    """A fresh tab (its own session storage) on the console, served from its own origin."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    console_messages: list[str] = []
    tab.on("console", lambda message: console_messages.append(f"{message.type}: {message.text}"))
    tab.on("pageerror", lambda error: console_messages.append(f"pageerror: {error}"))
    tab.goto(stack.console.url)
    yield tab
    context.close()
    errors = [line for line in console_messages if line.startswith("pageerror")]
    assert not errors, f"the page raised: {errors}"


@pytest.fixture
def screenshot(page) -> Any:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
