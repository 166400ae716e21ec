// Open files and their saves: a short debounce, `expected_version` on every write, retries
// while the service is unreachable, and a conflict (never a silent overwrite) when someone
// else's version lands first.

import { ApiError, NetworkError, rpc } from "./api.js";

export const SAVE_DEBOUNCE_MS = 250;
const RETRY_MS = [500, 1000, 2000, 4000];

/**
 * One file as this page edits it. `version` and `saved` are the server's current version and
 * its content as last known; `text` is the editor's buffer; `inflight` the content of a save
 * under way; `conflict` a newer version by someone else ({version, content, deleted, sender})
 * that the user must choose against.
 */
export class FileDocument {
  constructor(projectId, path, version, content, onChange) {
    this.projectId = projectId;
    this.path = path;
    this.version = version;
    this.saved = content;
    this.text = content;
    this.inflight = null;
    this.conflict = null;
    this.problem = null;
    this.retries = 0;
    this.timer = null;
    this.onChange = onChange;
  }

  get dirty() {
    return this.text !== this.saved;
  }

  get state() {
    if (this.conflict) return "conflict";
    if (this.inflight !== null) return "saving";
    if (this.problem) return this.problem.retrying ? "retrying" : "failed";
    return this.dirty ? "unsaved" : "saved";
  }

  edit(text) {
    this.text = text;
    this.problem = null;
    this.schedule(SAVE_DEBOUNCE_MS);
    this.onChange(this);
  }

  schedule(delay) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.save(), delay);
  }

  /** Write the buffer now (Ctrl+S, or when the debounce ends). */
  async save() {
    clearTimeout(this.timer);
    if (this.conflict || this.inflight !== null || !this.dirty) return;
    const sending = this.text;
    this.inflight = sending;
    this.onChange(this);
    try {
      const row = await rpc("upsert_project_file", {
        project_uuid: this.projectId, p_file_path: this.path, p_content: sending,
        expected_version: this.version,
      });
      this.inflight = null;
      this.retries = 0;
      this.problem = null;
      this.acceptVersion(row.version, sending);
      if (this.dirty) this.schedule(0);
    } catch (error) {
      this.inflight = null;
      await this.saveFailed(error);
    }
    this.onChange(this);
  }

  async saveFailed(error) {
    if (error instanceof ApiError && error.code === "23V02") {
      await this.loadConflict();
    } else if (error instanceof NetworkError || (error instanceof ApiError
               && (error.status === 429 || error.status === 503))) {
      const delay = RETRY_MS[Math.min(this.retries++, RETRY_MS.length - 1)];
      this.problem = { retrying: true, message: `${error.message}; retrying in ${delay} ms` };
      this.schedule(delay);
    } else {
      this.problem = { retrying: false, message: error.message };
    }
  }

  /** After a 409: the newer version, read back so the user sees what they would replace. */
  async loadConflict() {
    try {
      const [newest] = await rpc("file_history",
        { project_uuid: this.projectId, p_file_path: this.path });
      if (newest.version > this.version) {
        this.raiseConflict(newest.version, newest.content, newest.is_deleted,
          newest.last_modified_by);
      }
    } catch (error) {
      this.problem = { retrying: false, message: `conflict, and reading it failed: ${error.message}` };
    }
  }

  acceptVersion(version, content) {
    if (version < this.version) return;
    this.version = version;
    this.saved = content;
  }

  raiseConflict(version, content, deleted, sender) {
    if (this.conflict && this.conflict.version >= version) return;
    clearTimeout(this.timer);
    this.conflict = { version, content, deleted, sender };
  }

  /**
   * Someone's version `version` arrived (over the channel or a re-read). Returns what the
   * page should tell: "updated", "deleted", "conflict", or null (nothing new for us).
   */
  receive(version, content, deleted, sender) {
    if (version <= this.version) return null;
    if (this.inflight !== null && !deleted && content === this.inflight) return null; // our echo
    if (!this.dirty && this.inflight === null && !this.conflict) {
      this.version = version;
      this.saved = deleted ? null : content;
      this.text = this.saved;
      return deleted ? "deleted" : "updated";
    }
    this.raiseConflict(version, content, deleted, sender);
    return "conflict";
  }

  /** Overwrite their version with the buffer (a deletion is undone by re-creating). */
  keepMine() {
    const theirs = this.conflict;
    if (!theirs) return;
    this.conflict = null;
    this.version = theirs.version;
    this.saved = theirs.deleted ? null : theirs.content;
    this.save();
  }

  /** Drop the buffer for their version; false when theirs was a deletion (close the file). */
  takeTheirs() {
    const theirs = this.conflict;
    if (!theirs) return true;
    this.conflict = null;
    this.version = theirs.version;
    this.saved = theirs.deleted ? null : theirs.content;
    this.text = this.saved;
    this.problem = null;
    return !theirs.deleted;
  }

  close() {
    clearTimeout(this.timer);
  }
}
