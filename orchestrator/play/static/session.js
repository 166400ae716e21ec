// The preview session of this page: started on open, watched until `active` (or `error`),
// stopped on close. States: none, starting, creating, active, error, stopping, ended.

import { request } from "./api.js";

const POLL_CREATING_MS = 200;
const POLL_ACTIVE_MS = 3000;

export class PreviewSession {
  /** onChange(session) after every state change; `containerUrl` is the dev server's URL. */
  constructor(projectId, onChange) {
    this.projectId = projectId;
    this.onChange = onChange;
    this.id = null;
    this.status = "none";
    this.error = null;
    this.containerUrl = null;
    this.timer = null;
  }

  get live() {
    return this.id !== null && ["creating", "active"].includes(this.status);
  }

  async start() {
    this.set("starting", null);
    try {
      const reply = await request("POST", "/sessions/start", { projectId: this.projectId });
      this.id = reply.sessionId;
      this.set(reply.status, null);
      this.poll();
    } catch (error) {
      this.set("error", error.message);
    }
  }

  async stop() {
    if (!this.live) return;
    clearTimeout(this.timer);
    this.set("stopping", null);
    try {
      await request("POST", "/sessions/stop", { sessionId: this.id });
    } catch (error) {
      this.set("error", `stopping failed: ${error.message}`);
      return;
    }
    this.poll();
  }

  /** The page is going away: ask the service to stop the session, without waiting. */
  stopOnClose() {
    if (!this.live) return;
    request("POST", "/sessions/stop", { sessionId: this.id }, { keepalive: true })
      .catch(() => {});
  }

  async poll() {
    clearTimeout(this.timer);
    if (this.id === null) return;
    try {
      const status = await request("GET", `/sessions/${this.id}/status`);
      this.containerUrl = status.containerUrl;
      if (!(this.status === "stopping" && status.status === "active")) {
        this.set(status.status, status.error);
      }
    } catch (error) {
      this.error = `status unavailable: ${error.message}`;
      this.onChange(this);
    }
    if (["creating", "stopping", "starting"].includes(this.status)) {
      this.timer = setTimeout(() => this.poll(), POLL_CREATING_MS);
    } else if (this.status === "active") {
      this.timer = setTimeout(() => this.poll(), POLL_ACTIVE_MS);
    }
  }

  set(status, error) {
    const changed = status !== this.status || error !== this.error;
    this.status = status;
    this.error = error;
    if (changed) this.onChange(this);
  }
}
