"""Keystroke to preview, in a real browser: from the save request leaving the /play page to
the preview iframe's DOM showing the change.

The embedded stack (a private PostgreSQL, a Prefect server on it, the API under uvicorn) runs
as `velocity demo` runs it, under a temporary VELOCITY_HOME. Headless Chromium (Debian's,
through Playwright) opens the page for a `static` project, which starts a preview session;
then, `--edits` times, the editor's content is replaced (one input event) and saved at once
with Ctrl+S (no debounce). Both ends are read from the browser's own clocks:

- sent: the `upsert_project_file` request's Resource Timing `startTime` in the page;
- shown: in the reloaded preview document, the moment a MutationObserver installed at its
  start sees the `<h1>` with the new text enter the DOM.

Each edit waits until the iframe shows it before the next one. Also reported: the save's
round trip; save sent -> the iframe's reload starts (the agent applied the event and sent the
live-reload signal); reload start -> DOM; and save sent -> the reloaded page's first
contentful paint (what the eye sees: it also waits for the page's render-blocking CSS).

    python -m bench.keystroke_to_preview --json [--edits 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import emit, percentiles

GOAL_P50_MS = 150.0
WARMUP_EDITS = 3
STEP_TIMEOUT_MS = 15_000

SENT_AT = """() => {
  const saves = performance.getEntriesByType("resource")
    .filter((entry) => entry.name.endsWith("/rest/v1/rpc/upsert_project_file"));
  const last = saves[saves.length - 1];
  return last ? {sent: performance.timeOrigin + last.startTime,
                 roundTrip: last.responseEnd - last.startTime, count: saves.length} : null;
}"""
# In every preview document, from its start: when does an <h1> with text enter the DOM?
HEADING_WATCH = """if (location.origin !== %r) {
  const record = () => {
    const heading = document.querySelector("h1");
    if (heading && heading.textContent && !window.velocityHeadingSeen) {
      window.velocityHeadingSeen = {text: heading.textContent,
                                    at: performance.timeOrigin + performance.now()};
    }
  };
  new MutationObserver(record).observe(document, {childList: true, subtree: true,
                                                  characterData: true});
}"""
SHOWN_AT = """() => {
  const paint = performance.getEntriesByType("paint")
    .find((entry) => entry.name === "first-contentful-paint");
  return {reloadStart: performance.timeOrigin, shown: window.velocityHeadingSeen.at,
          painted: paint ? performance.timeOrigin + paint.startTime : null};
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--edits", type=int, default=50)
    args = parser.parse_args()
    if args.edits < 2:
        parser.error("--edits must be at least 2 (percentiles need several samples)")

    from orchestrator.play.headless import system_chromium

    chromium = system_chromium()
    if chromium is None:
        parser.error("no system Chromium: install Debian's `chromium` (scripts/test-tools)")
    home = Path(tempfile.mkdtemp(prefix="velocity-bench-play-"))
    os.chmod(home, 0o755)  # as root, the postgres user must reach the cluster directory
    os.environ["VELOCITY_HOME"] = str(home)
    try:
        samples = _run(chromium, args.edits)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    def summary(key: str) -> dict[str, float]:
        values = [sample[key] for sample in samples]
        return {**percentiles(values, (50, 95, 99)), "mean": round(statistics.mean(values), 3)}

    total = summary("total")
    emit({"edits": len(samples), "keystroke_to_preview_ms": total,
          "save_round_trip_ms": summary("round_trip"),
          "save_sent_to_reload_start_ms": summary("to_reload"),
          "reload_start_to_dom_ms": summary("reload_to_dom"),
          "keystroke_to_first_paint_ms": summary("painted"),
          "goal_p50_at_most_150_ms": total["p50"] <= GOAL_P50_MS}, args.json)


def _run(chromium: str, edits: int) -> list[dict[str, float]]:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from orchestrator.play.headless import VIEWPORT, launch_chromium
    from orchestrator.stack import EmbeddedStack, free_port, settings_for_address
    from velocity import accounts
    from velocity.db import Database
    from velocity.generation import template_files
    from velocity.tokens import mint_user_token

    port = free_port()
    settings = settings_for_address("127.0.0.1", port)
    stack = EmbeddedStack(settings)
    server: uvicorn.Server | None = None
    serving: threading.Thread | None = None
    try:
        stack.start_database()
        stack.start_prefect()
        from orchestrator.app import create_app  # after PREFECT_API_URL is set

        server = uvicorn.Server(uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning",
            ws_ping_interval=None, ws_per_message_deflate=False))
        serving = threading.Thread(target=server.run, daemon=True)
        serving.start()
        _wait(lambda: server is not None and server.started, 30, "the API to start")
        with Database(stack.database_url, max_size=2) as db:
            user = accounts.create_user(db, f"bench-{uuid.uuid4().hex[:8]}@example.test")
            project = accounts.create_project(db, "keystroke bench", user, template="static")
        token = mint_user_token(user, 3600, settings)
        original = next(f["content"] for f in template_files("static")
                        if f["file_path"] == "index.html")
        origin = f"http://127.0.0.1:{port}"
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright, chromium)
            try:
                context = browser.new_context(viewport=VIEWPORT)
                context.add_init_script(f"if (location.origin === {origin!r}) localStorage"
                                        f".setItem('velocity.accessToken', {token!r});")
                context.add_init_script(HEADING_WATCH % origin)
                page = context.new_page()
                page.goto(f"{origin}/play/{project}")
                page.wait_for_selector("#session-state[data-state=active]", timeout=120_000)
                page.click('#file-tree button[data-path="index.html"]')
                samples = [_one_edit(page, original, n) for n in range(WARMUP_EDITS + edits)]
                context.close()  # the page's session is stopped as it closes
            finally:
                browser.close()
        return samples[WARMUP_EDITS:]
    finally:
        if server is not None and serving is not None:
            server.should_exit = True
            serving.join(timeout=60)
        stack.stop()


def _one_edit(page: Any, original: str, n: int) -> dict[str, float]:
    heading = f"Edit {n} {uuid.uuid4().hex[:6]}"
    content = original.replace("Hello from Velocity", heading)
    page.evaluate("() => performance.clearResourceTimings()")
    editor = page.locator("#editor")
    editor.fill(content)
    editor.press("Control+s")
    preview = _preview_frame(page)
    preview.wait_for_function("(heading) => window.velocityHeadingSeen &&"
                              " window.velocityHeadingSeen.text === heading",
                              arg=heading, timeout=STEP_TIMEOUT_MS, polling=10)
    preview.wait_for_function("() => performance.getEntriesByType('paint').length > 0",
                              timeout=STEP_TIMEOUT_MS, polling=10)
    shown = preview.evaluate(SHOWN_AT)
    page.wait_for_selector("#save-state[data-state=saved]", timeout=STEP_TIMEOUT_MS)
    sent = page.evaluate(SENT_AT)
    if sent is None or sent["count"] != 1 or shown["painted"] is None:
        raise RuntimeError(f"edit {n}: expected one save and a painted preview, got {sent}, "
                           f"{shown}")
    return {"total": shown["shown"] - sent["sent"], "round_trip": sent["roundTrip"],
            "to_reload": shown["reloadStart"] - sent["sent"],
            "reload_to_dom": shown["shown"] - shown["reloadStart"],
            "painted": shown["painted"] - sent["sent"]}


def _preview_frame(page: Any) -> Any:
    handle = page.wait_for_selector("#preview[src]")
    frame = handle.content_frame()
    if frame is None:
        raise RuntimeError("the preview iframe has no document")
    return frame


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling a condition, with a deadline


if __name__ == "__main__":
    main()
