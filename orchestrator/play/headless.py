"""Headless Chromium for the page's tests, benchmark and screenshots: Debian's `chromium`
driven by Playwright through `executable_path`, so no browser is ever downloaded."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright, ViewportSize

# As root Chromium needs --no-sandbox. On a closed network the background services' connections
# are refused, so they are switched off rather than left to retry.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage")
VIEWPORT: ViewportSize = {"width": 1400, "height": 820}


def system_chromium() -> str | None:
    """The path of the system's Chromium (Debian's package installs `chromium`)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch_chromium(playwright: Playwright, executable: str) -> Browser:
    return playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
