// The editor page: sign in, the project's files, the editor with its saves and conflicts,
// history and restore, create/rename/delete, the live channel, and the preview session.

import { ApiError, el, forgetToken, request, rpc, signIn, storedToken } from "./api.js";
import { ProjectChannel } from "./channel.js";
import { FileDocument } from "./documents.js";
import { PreviewSession } from "./session.js";

const $ = (id) => document.getElementById(id);
const projectId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const MAX_ACTIVITY = 40;

const page = {
  me: null,
  project: null,
  emails: new Map(), // user id -> email, for "who changed it"
  files: new Map(), // path -> {version, content, fileType, binary}
  docs: new Map(), // path -> FileDocument, for files opened on this page
  selected: null,
  pathAction: null, // "create" | "rename" | "delete" while the path form is open
  history: [],
  historyPick: null,
  session: null,
  channel: null,
};

async function main() {
  $("sign-out").addEventListener("click", () => {
    forgetToken();
    location.reload();
  });
  page.me = await signIn($("gate"));
  $("who").textContent = page.me.email || page.me.userId;
  try {
    page.project = await request("GET", `/play/api/projects/${encodeURIComponent(projectId)}`);
  } catch (error) {
    fatal(error instanceof ApiError && error.status === 422
      ? `"${projectId}" is not a project id` : error.message);
    return;
  }
  for (const member of page.project.members) page.emails.set(member.userId, member.email);
  $("project-name").textContent = page.project.name;
  document.title = `${page.project.name} · Velocity play`;
  $("gate").replaceChildren();
  $("workspace").hidden = false;
  wireEditor();
  wireFiles();
  wirePreview();
  page.channel = new ProjectChannel({
    projectId, token: storedToken(), onEvent: receiveEvent, onResync: refreshFiles,
    onState: showChannelState,
  });
  page.channel.connect();
  await refreshFiles();
  page.session = new PreviewSession(projectId, showSession);
  window.addEventListener("pagehide", () => page.session.stopOnClose());
  page.session.start();
}

function fatal(message) {
  $("gate").replaceChildren(el("section", { class: "card" },
    el("h2", { text: "This project cannot be opened" }),
    el("p", { class: "problem", role: "alert", text: message }),
    el("a", { href: "/play", text: "Your projects" })));
}

// -- files -------------------------------------------------------------------------------

async function refreshFiles() {
  let rows;
  try {
    rows = await rpc("list_current_files", { project_uuid: projectId });
  } catch (error) {
    log(`reading the files failed: ${error.message}`, "problem");
    return;
  }
  const listed = new Set();
  for (const row of rows) {
    listed.add(row.file_path);
    fileChanged(row.file_path, row.version, row.content, false, null, row.file_type,
      row.storage_key !== null);
  }
  for (const [path, file] of page.files) {
    const doc = page.docs.get(path);
    if (!listed.has(path) && (!doc || (!doc.dirty && doc.inflight === null))) {
      fileChanged(path, file.version + 1, null, true, null);
    }
  }
  renderTree();
}

function receiveEvent(type, payload) {
  const items = type === "bulk:apply" ? payload.files || []
    : type === "file:update" ? [{ ...payload, action: "update" }]
      : type === "file:delete" ? [{ ...payload, action: "delete" }] : [];
  for (const item of items) {
    fileChanged(item.file_path, item.version, item.content ?? null, item.action === "delete",
      payload.sender || null, item.file_type, Boolean(item.download_url));
  }
  if (items.length) renderTree();
}

/** One path's newer version, from the channel or a re-read; older news changes nothing. */
function fileChanged(path, version, content, deleted, sender, fileType, binary = false) {
  const known = page.files.get(path);
  if (known && known.version >= version) return;
  if (deleted) page.files.delete(path);
  else page.files.set(path, { version, content, fileType, binary });
  const doc = page.docs.get(path);
  const outcome = doc ? doc.receive(version, content, deleted, sender) : null;
  const who = sender ? describeUser(sender) : null;
  if (who && sender !== page.me.userId) {
    log(`${who} ${deleted ? "deleted" : "changed"} ${path} (v${version})`, "remote");
  }
  if (outcome === "deleted") closeDocument(path);
  if (doc && path === page.selected) renderDocument();
}

function describeUser(userId) {
  if (userId === page.me.userId) return "you";
  return page.emails.get(userId) || `user ${userId.slice(0, 8)}`;
}

function renderTree() {
  const tree = $("file-tree");
  const paths = [...page.files.keys()].sort();
  tree.replaceChildren(...paths.map((path) => {
    const depth = path.split("/").length - 1;
    const doc = page.docs.get(path);
    const marker = doc && doc.state !== "saved" ? " ●" : "";
    return el("li", { style: `--depth: ${depth}` }, el("button", {
      type: "button", class: path === page.selected ? "file selected" : "file",
      "data-path": path, "aria-current": path === page.selected ? "true" : null,
      text: path.split("/").pop() + marker, title: path,
      onclick: () => openDocument(path),
    }));
  }));
  $("rename-file").disabled = $("delete-file").disabled = !page.selected || readOnly();
  $("new-file").disabled = readOnly();
}

function readOnly() {
  return page.project.role === "viewer";
}

function openDocument(path) {
  const file = page.files.get(path);
  if (!file) return;
  if (!page.docs.has(path)) {
    page.docs.set(path, new FileDocument(projectId, path, file.version, file.content,
      documentChanged));
  }
  page.selected = path;
  page.historyPick = null;
  $("history").hidden = true;
  renderTree();
  renderDocument();
}

function closeDocument(path) {
  const doc = page.docs.get(path);
  if (doc) doc.close();
  page.docs.delete(path);
  if (page.selected === path) {
    page.selected = null;
    $("history").hidden = true;
  }
  renderDocument();
}

function documentChanged(doc) {
  const known = page.files.get(doc.path);
  if (known && doc.version > known.version && doc.saved !== null) {
    page.files.set(doc.path, { ...known, version: doc.version, content: doc.saved });
  }
  if (doc.path === page.selected) renderDocument();
  renderTree();
}

// -- the editor --------------------------------------------------------------------------

function wireEditor() {
  const editor = $("editor");
  editor.addEventListener("input", () => {
    const doc = page.docs.get(page.selected);
    if (doc) doc.edit(editor.value);
  });
  editor.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "s") {
      event.preventDefault();
      const doc = page.docs.get(page.selected);
      if (doc) doc.save();
    }
  });
  $("keep-mine").addEventListener("click", () => page.docs.get(page.selected)?.keepMine());
  $("take-theirs").addEventListener("click", () => {
    const doc = page.docs.get(page.selected);
    if (!doc) return;
    if (!doc.takeTheirs()) {
      page.files.delete(doc.path);
      closeDocument(doc.path);
      renderTree();
      return;
    }
    documentChanged(doc);
  });
  $("history-toggle").addEventListener("click", toggleHistory);
  $("restore-version").addEventListener("click", restorePicked);
}

function renderDocument() {
  const doc = page.docs.get(page.selected);
  const editor = $("editor");
  const file = page.selected ? page.files.get(page.selected) : null;
  $("file-path").textContent = doc ? doc.path : "no file selected";
  $("history-toggle").disabled = !doc;
  if (!doc) {
    editor.value = "";
    editor.disabled = true;
    $("conflict").hidden = true;
    $("save-state").textContent = "";
    $("save-state").dataset.state = "idle";
    return;
  }
  const binary = file && file.binary;
  editor.disabled = binary;
  editor.readOnly = readOnly();
  if (binary) editor.value = "(a binary file: not editable here)";
  else if (editor.value !== doc.text) editor.value = doc.text ?? "";
  const state = doc.state;
  const label = {
    saved: `saved · v${doc.version}`, unsaved: "unsaved", saving: "saving…",
    conflict: "conflict", retrying: doc.problem?.message, failed: `not saved: ${doc.problem?.message}`,
  }[state];
  $("save-state").textContent = label;
  $("save-state").dataset.state = state;
  const conflict = doc.conflict;
  $("conflict").hidden = !conflict;
  if (conflict) {
    const who = !conflict.sender ? "someone"
      : conflict.sender === page.me.userId ? "you, in another tab," : describeUser(conflict.sender);
    $("conflict-message").textContent = conflict.deleted
      ? `${who} deleted ${doc.path} (v${conflict.version}) while you were editing it.`
      : `${who} saved a newer version of ${doc.path} (v${conflict.version}) while you were `
        + "editing it. Their lines that differ from yours:";
    $("conflict-theirs").textContent = conflict.deleted ? "" : differingLines(conflict.content,
      doc.text ?? "");
    $("conflict-theirs").hidden = conflict.deleted;
    $("take-theirs").textContent = conflict.deleted ? "Accept the deletion" : "Take theirs";
  }
}

/** The lines of `theirs` between the first and last line where it differs from `mine`. */
function differingLines(theirs, mine) {
  const a = theirs.split("\n");
  const b = mine.split("\n");
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start += 1;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA -= 1;
    endB -= 1;
  }
  if (endA === start) return "(their version only lacks some of your lines)";
  return a.slice(start, endA).map((line, index) => `${String(start + index + 1).padStart(4)}  ${line}`)
    .join("\n");
}

// -- history -----------------------------------------------------------------------------

async function toggleHistory() {
  const panel = $("history");
  if (!panel.hidden) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  await loadHistory();
}

async function loadHistory() {
  const doc = page.docs.get(page.selected);
  if (!doc) return;
  try {
    page.history = await rpc("file_history", { project_uuid: projectId, p_file_path: doc.path });
  } catch (error) {
    $("history-list").replaceChildren(el("li", { class: "problem", text: error.message }));
    return;
  }
  page.historyPick = null;
  renderHistory();
}

function renderHistory() {
  $("history-list").replaceChildren(...page.history.map((row) => el("li", {},
    el("button", {
      type: "button", "data-version": row.version,
      class: row.version === page.historyPick ? "version selected" : "version",
      text: `v${row.version} · ${new Date(row.updated_at).toLocaleTimeString()} · `
        + `${describeUser(row.last_modified_by || "")}`
        + (row.is_deleted ? " · deleted" : ` · ${row.size_bytes} B`),
      onclick: () => {
        page.historyPick = row.version;
        renderHistory();
      },
    }))));
  const picked = page.history.find((row) => row.version === page.historyPick);
  $("history-preview").textContent = picked
    ? (picked.is_deleted ? "(deleted)" : picked.content ?? "(binary)") : "";
  $("restore-version").disabled = !picked || picked.is_deleted || readOnly()
    || picked.version === page.history[0]?.version;
}

async function restorePicked() {
  const doc = page.docs.get(page.selected);
  if (!doc || page.historyPick === null) return;
  try {
    const row = await rpc("restore_file_version", {
      project_uuid: projectId, p_file_path: doc.path, p_version: page.historyPick,
      expected_version: doc.version,
    });
    doc.close();
    doc.acceptVersion(row.version, row.content);
    doc.text = row.content;
    documentChanged(doc);
    log(`restored ${doc.path} to v${page.historyPick} (now v${row.version})`);
  } catch (error) {
    if (error instanceof ApiError && error.code === "23V02") await doc.loadConflict();
    else log(`restore failed: ${error.message}`, "problem");
    renderDocument();
  }
  await loadHistory();
}

// -- create, rename, delete ---------------------------------------------------------------

function wireFiles() {
  $("new-file").addEventListener("click", () => askPath("create", "New file path", ""));
  $("rename-file").addEventListener("click",
    () => askPath("rename", `Rename ${page.selected} to`, page.selected));
  $("delete-file").addEventListener("click",
    () => askPath("delete", `Delete ${page.selected}?`, null));
  $("path-cancel").addEventListener("click", closePathForm);
  $("path-form").addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const path = $("path-input").value.trim();
    const action = page.pathAction;
    try {
      if (action === "create") await createFile(path);
      else if (action === "rename") await renameFile(page.selected, path);
      else if (action === "delete") await deleteFile(page.selected);
      closePathForm();
    } catch (error) {
      $("path-label").textContent = `${labelFor(action)}: ${explain(error, path)}`;
      $("path-label").classList.add("problem");
    }
  });
}

function askPath(action, label, value) {
  page.pathAction = action;
  $("path-form").hidden = false;
  $("path-label").textContent = label;
  $("path-label").classList.remove("problem");
  $("path-input").hidden = value === null;
  $("path-input").value = value ?? "";
  $("path-submit").textContent = action === "delete" ? "Delete" : "OK";
  if (value !== null) $("path-input").focus();
}

function labelFor(action) {
  return { create: "Could not create", rename: "Could not rename", delete: "Could not delete" }[
    action];
}

function explain(error, path) {
  if (error instanceof ApiError && error.code === "23V02") {
    return `${path} already exists, or changed meanwhile`;
  }
  return error.message;
}

function closePathForm() {
  page.pathAction = null;
  $("path-form").hidden = true;
}

async function createFile(path) {
  const row = await rpc("upsert_project_file", {
    project_uuid: projectId, p_file_path: path, p_content: "", expected_version: 0,
  });
  fileChanged(row.file_path, row.version, row.content, false, null, row.file_type);
  renderTree();
  openDocument(row.file_path);
}

async function renameFile(from, to) {
  const doc = page.docs.get(from);
  if (!doc || doc.inflight !== null || doc.conflict) {
    throw new Error("wait until the file is saved");
  }
  const reply = await rpc("bulk_upsert_project_files", {
    project_uuid: projectId,
    files: [
      { file_path: from, action: "delete", expected_version: doc.version },
      { file_path: to, content: doc.text, expected_version: 0 },
    ],
  });
  const [gone, made] = reply.files;
  closeDocument(from);
  fileChanged(from, gone.version, null, true, null);
  fileChanged(to, made.version, doc.text, false, null, page.files.get(from)?.fileType);
  renderTree();
  openDocument(to);
}

async function deleteFile(path) {
  const doc = page.docs.get(path);
  const row = await rpc("delete_project_file", {
    project_uuid: projectId, p_file_path: path, expected_version: doc ? doc.version : null,
  });
  closeDocument(path);
  fileChanged(path, row.version, null, true, null);
  renderTree();
}

// -- the preview and the session ------------------------------------------------------------

function wirePreview() {
  // Live reload cannot reach a page that failed to load while offline: load it again.
  window.addEventListener("online", showPreview);
  $("preview-form").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    showPreview();
  });
  $("session-toggle").addEventListener("click", () => {
    if (page.session.live) page.session.stop();
    else page.session.start();
  });
}

function showPreview() {
  const base = page.session && page.session.status === "active" && page.session.containerUrl;
  const frame = $("preview");
  if (!base) {
    frame.removeAttribute("src");
    $("preview-open").removeAttribute("href");
    return;
  }
  let path = $("preview-path").value.trim() || "/";
  if (!path.startsWith("/")) path = `/${path}`;
  const url = base.replace(/\/$/, "") + path;
  frame.src = url;
  $("preview-open").href = url;
}

function showSession(session) {
  const badge = $("session-state");
  badge.dataset.state = session.status;
  badge.textContent = `preview: ${session.status}`;
  $("session-error").textContent = session.error || "";
  const toggle = $("session-toggle");
  toggle.disabled = ["starting", "stopping"].includes(session.status);
  toggle.textContent = session.live ? "Stop preview" : "Start preview";
  const wanted = session.status === "active" ? session.containerUrl : null;
  if (wanted !== page.previewBase) {
    page.previewBase = wanted;
    showPreview();
    if (wanted) refreshFiles();
  }
}

function showChannelState(state, detail) {
  const badge = $("channel-state");
  badge.dataset.state = state;
  badge.textContent = `live: ${state}${detail ? ` (${detail})` : ""}`;
}

// -- activity ------------------------------------------------------------------------------

function log(message, kind = "info") {
  const list = $("activity");
  list.prepend(el("li", { class: kind },
    el("time", { text: new Date().toLocaleTimeString() }), ` ${message}`));
  while (list.children.length > MAX_ACTIVITY) list.lastElementChild.remove();
}

main().catch((error) => fatal(error.message));
