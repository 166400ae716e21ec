"""The editor-and-preview page (`/play`) in headless Chromium against the real stack: the
service under uvicorn, PostgreSQL, a Prefect server running provision-session, and preview
agents started by the process runtime. What a person does, the browser does: it signs in,
creates a project, types, and reads the preview iframe's DOM."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from playwright.sync_api import Page, expect

from orchestrator.app import create_app
from velocity import accounts
from velocity.db import Actor, Database
from velocity.files import FileClient
from velocity.generation import template_files, template_names
from velocity.settings import Settings, get_settings
from velocity.tokens import mint_user_token

from .api_support import Api, running_api
from .browser import (
    chromium,
    editor_text,
    file_button,
    replace_in_editor,
    saved_version,
    signed_in_context,
)
from .helpers import file_state, wait_for

SESSION_TIMEOUT_MS = 60_000
PREVIEW_TIMEOUT_MS = 15_000
# Set to a directory (e.g. docs/screenshots) to keep the screenshots the test takes.
SCREENSHOTS = os.environ.get("VELOCITY_PLAY_SCREENSHOTS")


@pytest.fixture
def api(prefect_server, configured, monkeypatch):
    monkeypatch.setenv("VELOCITY_DEV_LOGIN", "1")
    with running_api(monkeypatch) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with chromium("the editor-and-preview page is tested in a real browser") as launched:
        yield launched


def current_file(db: Database, project_id: UUID, path: str) -> tuple[int, str | None] | None:
    with db.transaction() as conn:
        row = conn.execute("SELECT version, content FROM project_files_current"
                           " WHERE project_id = %s AND file_path = %s",
                           (project_id, path)).fetchone()
    return (row[0], row[1]) if row else None


def session_statuses(db: Database, project_id: UUID) -> list[str]:
    with db.transaction() as conn:
        rows = conn.execute("SELECT status FROM preview_sessions WHERE project_id = %s"
                            " ORDER BY created_at", (project_id,)).fetchall()
    return [row[0] for row in rows]


def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not an empty canvas
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOTS) / path.name)


def wait_until_active(page: Page) -> None:
    expect(page.locator("#session-state")).to_have_text("preview: active",
                                                         timeout=SESSION_TIMEOUT_MS)


# -- the JSON API behind the page, and the dev login's guards ---------------------------------


def test_dev_login_is_off_unless_configured_and_only_for_loopback(configured, monkeypatch):
    assert configured.dev_login is False
    monkeypatch.setenv("VELOCITY_PUBLIC_URL", "https://velocity.example.com")
    monkeypatch.setenv("VELOCITY_DEV_LOGIN", "1")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="VELOCITY_DEV_LOGIN.*loopback.*velocity.example.com"):
        get_settings()
    assert Settings(dev_login=True, public_url="http://localhost:8000").dev_login
    assert Settings(dev_login=True, public_url="http://[::1]:8000").dev_login


async def test_dev_login_refuses_clients_from_other_machines(configured, monkeypatch):
    monkeypatch.setenv("VELOCITY_DEV_LOGIN", "1")
    get_settings.cache_clear()
    app = create_app(get_settings())
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://velocity.test") as remote:
        refused = await remote.post("/play/api/dev-login", json={"email": "a@example.test"})
    assert refused.status_code == 403, refused.text
    assert refused.json() == {"code": "permission_denied", "client": "203.0.113.7",
                              "message": "dev login answers only clients on this machine"}


def test_play_api(api: Api, db, new_user, new_project, monkeypatch):
    login = api.client.post("/play/api/dev-login", json={"email": " dev@example.test "})
    assert login.status_code == 200, login.text
    body = login.json()
    headers = {"Authorization": f"Bearer {body['accessToken']}"}
    assert api.client.get("/play/api/me", headers=headers).json() == {
        "userId": body["userId"], "email": "dev@example.test"}
    again = api.client.post("/play/api/dev-login", json={"email": "dev@example.test"})
    assert again.json()["userId"] == body["userId"]  # the same person, not a new user
    assert api.client.post("/play/api/dev-login", json={"email": "no-at-sign"}).json()[
        "code"] == "invalid_input"
    assert api.client.get("/play/api/config").json() == {
        "devLogin": True, "templates": template_names()}
    assert "static" in template_names()

    with db.transaction() as conn:
        (projects_before,) = conn.execute("SELECT count(*) FROM projects").fetchone()
    unknown = api.client.post("/play/api/projects", headers=headers,
                              json={"name": "x", "template": "cobol"})
    assert unknown.status_code == 400
    assert "unknown template 'cobol'" in unknown.json()["message"]
    blank = api.client.post("/play/api/projects", headers=headers, json={"name": ""})
    assert blank.status_code == 422 and blank.json()["errors"][0]["field"] == "name"
    with db.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM projects").fetchone()[0] == projects_before

    made = api.client.post("/play/api/projects", headers=headers, json={"name": "Mine"})
    assert made.status_code == 201, made.text
    assert made.json()["template"] == "static" and made.json()["role"] == "owner"
    listed = api.client.get("/play/api/projects", headers=headers).json()
    assert [project["name"] for project in listed] == ["Mine"]

    others, _ = new_project()
    hidden = api.client.get(f"/play/api/projects/{others}", headers=headers)
    assert hidden.status_code == 404
    assert api.client.get("/play/api/projects", headers=api.service_headers()).status_code == 403
    assert api.client.get("/play/api/me").status_code == 401
    assert api.client.get("/play/seven").status_code == 422
    assert api.client.get("/play/assets/..%2Fprojects.py").status_code == 404
    page = api.client.get(f"/play/{others}")
    assert page.status_code == 200 and '<textarea id="editor"' in page.text


def test_dev_login_is_404_when_off(configured, monkeypatch):
    with running_api(monkeypatch) as api:
        off = api.client.post("/play/api/dev-login", json={"email": "a@example.test"})
        assert off.status_code == 404 and "VELOCITY_DEV_LOGIN" in off.json()["message"]
        assert api.client.get("/play/api/config").json()["devLogin"] is False


# -- in the browser ---------------------------------------------------------------------------


def test_edit_and_see_the_preview_change(api: Api, db, browser, tmp_path):
    """Sign in, create a static project, type into index.html and read the change in the
    iframe's DOM; create, rename and delete files (the preview 404s the deleted one);
    restore an old version; stop the preview; closing the page ends its session."""
    context = signed_in_context(browser, api.server.http_url)
    page = context.new_page()
    page.goto(f"{api.server.http_url}/play")
    page.fill("#signin-email", "ada@example.test")
    page.click("#signin-dev-form button")
    expect(page.locator("#project-list")).to_contain_text("No projects yet")
    page.fill("#project-name-input", "Browser test")
    page.click("#new-project button")
    page.wait_for_url("**/play/*-*")
    project_id = UUID(page.url.rsplit("/", 1)[1])
    expect(page.locator("#project-name")).to_have_text("Browser test")

    # Provisioning takes a second or more; the page shows it until the preview is up.
    expect(page.locator("#session-state")).to_have_text("preview: creating")
    wait_until_active(page)
    for path in ("index.html", "main.js", "style.css"):
        expect(file_button(page, path)).to_be_visible()
    preview = page.frame_locator("#preview")
    expect(preview.locator("h1")).to_have_text("Hello from Velocity", timeout=PREVIEW_TIMEOUT_MS)

    file_button(page, "index.html").click()
    original = next(f["content"] for f in template_files("static")
                    if f["file_path"] == "index.html")
    assert editor_text(page) == original
    replace_in_editor(page, "Hello from Velocity", "Typed in Chromium")
    expect(preview.locator("h1")).to_have_text("Typed in Chromium", timeout=PREVIEW_TIMEOUT_MS)
    typed = saved_version(page)
    assert typed >= 2  # pauses in typing may have saved parts of it on the way
    assert current_file(db, project_id, "index.html") == (
        typed, original.replace("Hello from Velocity", "Typed in Chromium"))
    screenshot(page, "play-editor", tmp_path)

    # Create a page, see it in the preview; rename it, then delete it: the preview 404s.
    page.click("#new-file")
    page.fill("#path-input", "about.html")
    page.click("#path-submit")
    expect(page.locator("#file-path")).to_have_text("about.html")
    page.locator("#editor").click()
    page.keyboard.type("<h1>About this project</h1>")
    assert saved_version(page) >= 2
    page.fill("#preview-path", "/about.html")
    page.click("#preview-form button")
    expect(preview.locator("h1")).to_have_text("About this project",
                                               timeout=PREVIEW_TIMEOUT_MS)

    page.click("#rename-file")
    page.fill("#path-input", "team.html")
    page.click("#path-submit")
    expect(file_button(page, "team.html")).to_be_visible()
    expect(file_button(page, "about.html")).to_have_count(0)
    expect(preview.locator("body")).to_have_text("not found", timeout=PREVIEW_TIMEOUT_MS)
    assert current_file(db, project_id, "about.html") is None
    assert current_file(db, project_id, "team.html") == (1, "<h1>About this project</h1>")

    page.fill("#preview-path", "/team.html")
    page.click("#preview-form button")
    expect(preview.locator("h1")).to_have_text("About this project",
                                               timeout=PREVIEW_TIMEOUT_MS)
    page.click("#delete-file")
    expect(page.locator("#path-label")).to_have_text("Delete team.html?")
    page.click("#path-submit")
    expect(file_button(page, "team.html")).to_have_count(0)
    expect(preview.locator("body")).to_have_text("not found", timeout=PREVIEW_TIMEOUT_MS)
    assert current_file(db, project_id, "team.html") is None

    # A bad path is refused with the reason, and nothing changes.
    before = file_state(db, project_id)
    page.click("#new-file")
    page.fill("#path-input", "../outside.html")
    page.click("#path-submit")
    expect(page.locator("#path-label")).to_contain_text("Could not create: invalid path")
    assert file_state(db, project_id) == before
    page.click("#path-cancel")

    # History: restore version 1 of index.html; the preview follows.
    file_button(page, "index.html").click()
    page.click("#history-toggle")
    expect(page.locator("#history-list button")).to_have_count(typed)
    page.click('#history-list button[data-version="1"]')
    expect(page.locator("#history-preview")).to_have_text(original)
    screenshot(page, "play-history", tmp_path)
    page.click("#restore-version")
    expect(page.locator("#save-state")).to_have_text(f"saved · v{typed + 1}")
    assert editor_text(page) == original
    assert current_file(db, project_id, "index.html") == (typed + 1, original)
    expect(page.locator("#history-list button")).to_have_count(typed + 1)
    page.fill("#preview-path", "/")
    page.click("#preview-form button")
    expect(preview.locator("h1")).to_have_text("Hello from Velocity",
                                               timeout=PREVIEW_TIMEOUT_MS)

    # Stop and start from the page; then closing the page stops its session.
    page.click("#session-toggle")
    expect(page.locator("#session-state")).to_have_text("preview: ended",
                                                        timeout=SESSION_TIMEOUT_MS)
    assert session_statuses(db, project_id) == ["ended"]
    page.click("#session-toggle")
    wait_until_active(page)
    assert session_statuses(db, project_id) == ["ended", "active"]
    page.close()
    wait_for(lambda: session_statuses(db, project_id) == ["ended", "ended"], timeout=30,
             message="closing the page to stop its session")
    context.close()


def test_other_users_edits_arrive_live_and_conflicts_are_chosen(api: Api, db, browser,
                                                                 tmp_path):
    ada = accounts.create_user(db, "ada.live@example.test")
    bob = accounts.create_user(db, "bob.live@example.test")
    project = accounts.create_project(db, "Shared", ada, [(bob, "editor")], template="static")
    FileClient(db, Actor.service()).bulk_upsert(project, template_files("static"))
    contexts = [signed_in_context(browser, api.server.http_url,
                                  mint_user_token(user, 600, api.settings))
                for user in (ada, bob)]
    ada_page, bob_page = (context.new_page() for context in contexts)
    for page in (ada_page, bob_page):
        page.goto(f"{api.server.http_url}/play/{project}")
        expect(page.locator("#channel-state")).to_have_text("live: joined")
        file_button(page, "index.html").click()
    wait_until_active(ada_page)

    # Bob's edit shows in Ada's (clean) editor and in her preview, with who made it.
    replace_in_editor(bob_page, "Hello from Velocity", "Bob was here", paste=True)
    expect(ada_page.locator("#editor")).to_have_value(
        editor_text(bob_page), timeout=PREVIEW_TIMEOUT_MS)
    expect(ada_page.locator("#activity")).to_contain_text(
        "bob.live@example.test changed index.html (v2)")
    expect(ada_page.frame_locator("#preview").locator("h1")).to_have_text(
        "Bob was here", timeout=PREVIEW_TIMEOUT_MS)

    # Ada edits offline while Bob saves again: she is shown Bob's version, not overwritten.
    contexts[0].set_offline(True)
    replace_in_editor(ada_page, "Bob was here", "Ada offline", paste=True)
    expect(ada_page.locator("#save-state")).to_have_text("unsaved")
    replace_in_editor(bob_page, "Bob was here", "Bob again", paste=True)
    expect(bob_page.locator("#save-state")).to_have_text("saved · v3")
    contexts[0].set_offline(False)
    conflict = ada_page.locator("#conflict")
    expect(conflict).to_be_visible(timeout=PREVIEW_TIMEOUT_MS)
    expect(ada_page.locator("#conflict-message")).to_contain_text(
        "bob.live@example.test saved a newer version of index.html (v3)")
    expect(ada_page.locator("#conflict-theirs")).to_contain_text("Bob again")
    expect(ada_page.locator("#save-state")).to_have_text("conflict")
    expect(ada_page.frame_locator("#preview").locator("h1")).to_have_text(
        "Bob again", timeout=PREVIEW_TIMEOUT_MS)  # reloaded once she is back online
    version, content = current_file(db, project, "index.html")
    assert version == 3 and "Bob again" in content and "Ada offline" not in content
    screenshot(ada_page, "play-conflict", tmp_path)

    # She keeps hers: it becomes version 4, and Bob's editor follows.
    ada_page.click("#keep-mine")
    expect(ada_page.locator("#save-state")).to_have_text("saved · v4")
    expect(conflict).to_be_hidden()
    version, content = current_file(db, project, "index.html")
    assert version == 4 and "Ada offline" in content
    expect(bob_page.locator("#editor")).to_have_value(content, timeout=PREVIEW_TIMEOUT_MS)
    expect(ada_page.frame_locator("#preview").locator("h1")).to_have_text(
        "Ada offline", timeout=PREVIEW_TIMEOUT_MS)

    # Bob, editing at the same time as her, takes hers instead.
    contexts[1].set_offline(True)
    replace_in_editor(bob_page, "Ada offline", "Bob offline", paste=True)
    replace_in_editor(ada_page, "Ada offline", "Ada online", paste=True)
    expect(ada_page.locator("#save-state")).to_have_text("saved · v5")
    contexts[1].set_offline(False)
    expect(bob_page.locator("#conflict")).to_be_visible(timeout=PREVIEW_TIMEOUT_MS)
    bob_page.click("#take-theirs")
    expect(bob_page.locator("#editor")).to_have_value(current_file(db, project, "index.html")[1])
    expect(bob_page.locator("#save-state")).to_have_text("saved · v5")
    assert current_file(db, project, "index.html")[0] == 5
    # Closing a page stops its session. (Closing its whole browser context at once can drop
    # the page's last request, the stop, before it leaves: close the pages first.)
    for page in (ada_page, bob_page):
        page.close()
    wait_for(lambda: set(session_statuses(db, project)) == {"ended"}, timeout=30,
             message="both pages' sessions to end")
    for context in contexts:
        context.close()


def test_a_session_that_cannot_start_shows_error_with_its_message(
        prefect_server, configured, monkeypatch, db, browser):
    monkeypatch.setenv("VELOCITY_DEFAULT_RUNTIME", "mainframe")
    with running_api(monkeypatch) as api:
        owner = accounts.create_user(db, "eve.error@example.test")
        project = accounts.create_project(db, "Broken runtime", owner, template="static")
        context = signed_in_context(browser, api.server.http_url,
                                    mint_user_token(owner, 600, api.settings))
        page = context.new_page()
        page.goto(f"{api.server.http_url}/play/{project}")
        expect(page.locator("#session-state")).to_have_text("preview: error",
                                                            timeout=SESSION_TIMEOUT_MS)
        expect(page.locator("#session-error")).to_contain_text("mainframe")
        expect(page.locator("#session-toggle")).to_have_text("Start preview")
        context.close()
