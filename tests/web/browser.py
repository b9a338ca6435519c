"""A real headless Chromium for the painter's tests and benchmark: the distribution's own browser (`chromium`
from Debian's packages, found on PATH or through `FILLBOT_CHROMIUM`) driven by Playwright, which never downloads
a browser of its own here.

Tests skip with a reason only when the browser or Playwright is genuinely absent; CI sets
`FILLBOT_REQUIRE_BROWSER=1` (after installing both), so there a missing browser fails instead of skipping.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser

NAMES = ("chromium", "chromium-browser", "google-chrome")
# Root (as in CI and containers) cannot use Chromium's sandbox; the page under test is our own, on loopback.
ARGS = ("--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu")


def chromium_path() -> str | None:
    """The system Chromium, or None when this machine has none."""
    chosen = os.environ.get("FILLBOT_CHROMIUM")
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "no system Chromium (apt-get install -y chromium, or set FILLBOT_CHROMIUM)"
    return None


def require_browser() -> None:
    """Skip the calling test when the browser is absent, unless CI demands it (then fail)."""
    reason = missing()
    if reason is None:
        return
    if os.environ.get("FILLBOT_REQUIRE_BROWSER"):
        pytest.fail(f"FILLBOT_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(reason)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    path = chromium_path()
    assert path is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=list(ARGS), headless=True)
        try:
            yield browser
        finally:
            await browser.close()
