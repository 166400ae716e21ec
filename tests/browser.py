"""Headless Chromium for tests (orchestrator/play/headless.py) and helpers to drive the
play page as a person would."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from orchestrator.play.headless import VIEWPORT, launch_chromium

from .helpers import require_tool


@contextmanager
def chromium(why: str) -> Iterator[Browser]:
    executable = require_tool("chromium", why)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, executable)
        try:
            yield browser
        finally:
            browser.close()


def signed_in_context(browser: Browser, origin: str, token: str | None = None
                      ) -> BrowserContext:
    """A fresh profile; with `token`, pages of `origin` find it where the sign-in form
    stores one (the preview iframe, another origin, is left alone)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.on("page", _report_page_errors)
    if token is not None:
        context.add_init_script(
            f"if (location.origin === {origin!r}) "
            f"localStorage.setItem('velocity.accessToken', {token!r});")
    return context


def _report_page_errors(page: Page) -> None:
    """Print the page's script errors and console errors into the test's captured output."""
    page.on("pageerror", lambda error: print(f"[{page.url}] page error: {error}"))
    page.on("console", lambda message: message.type == "error"
            and print(f"[{page.url}] console error: {message.text}"))


def file_button(page: Page, path: str):
    return page.locator(f'#file-tree button[data-path="{path}"]')


def editor_text(page: Page) -> str:
    return page.locator("#editor").input_value()


def replace_in_editor(page: Page, old: str, new: str, paste: bool = False) -> None:
    """Select `old` in the editor and type `new` over it, key by key, as a person would
    (a slow typist's pauses may save parts of it); or paste it, as one input."""
    editor = page.locator("#editor")
    editor.click()
    found = editor.evaluate(
        """(node, old) => {
             const at = node.value.indexOf(old);
             if (at < 0) return false;
             node.setSelectionRange(at, at + old.length);
             return true;
           }""", old)
    assert found, f"{old!r} is not in the editor"
    if paste:
        page.keyboard.insert_text(new)
    else:
        page.keyboard.type(new)


def saved_version(page: Page) -> int:
    """The version the editor's badge says is saved, once it says so."""
    badge = page.locator("#save-state")
    expect(badge).to_have_text(re.compile(r"saved · v\d+"))
    return int(badge.inner_text().rsplit("v", 1)[1])
