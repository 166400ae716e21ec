// A project's realtime channel: Supabase Realtime's Phoenix protocol (vsn 1.0.0), plus the
// gateway's `since_seq` extension, so that a reconnect replays every event it missed.

const HEARTBEAT_MS = 20000;
const RETRY_MS = [250, 500, 1000, 2000, 5000];
// Join refusals that a retry cannot fix: stop and say why.
const FINAL_REASONS = new Set([
  "expired", "bad_signature", "malformed", "wrong_audience", "wrong_role", "not_a_member",
  "alg_not_allowed", "unknown_topic",
]);

export class ProjectChannel {
  /**
   * onEvent(type, payload) for every event in seq order, exactly once; onResync() when the
   * gateway says events were lost for good (re-read the files); onState(state, detail) with
   * "connecting", "joined", "disconnected" or "refused".
   */
  constructor({ projectId, token, onEvent, onResync, onState }) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.url = `${scheme}://${location.host}/realtime/v1/websocket?vsn=1.0.0`;
    this.topic = `realtime:project:${projectId}`;
    this.token = token;
    this.onEvent = onEvent;
    this.onResync = onResync || (() => {});
    this.onState = onState || (() => {});
    this.lastSeq = null;
    this.ref = 0;
    this.parts = new Map();
    this.attempt = 0;
    this.closed = false;
    this.socket = null;
  }

  connect() {
    this.closed = false;
    this.onState("connecting");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => this.join();
    socket.onmessage = (message) => this.receive(JSON.parse(message.data));
    socket.onclose = () => {
      clearInterval(this.heartbeat);
      if (this.socket !== socket || this.closed) return;
      this.onState("disconnected");
      const delay = RETRY_MS[Math.min(this.attempt++, RETRY_MS.length - 1)];
      this.retry = setTimeout(() => this.connect(), delay);
    };
  }

  close() {
    this.closed = true;
    clearTimeout(this.retry);
    clearInterval(this.heartbeat);
    if (this.socket) this.socket.close();
  }

  send(topic, event, payload, joinRef = this.joinRef) {
    const ref = String(++this.ref);
    this.socket.send(JSON.stringify({ topic, event, payload, ref, join_ref: joinRef }));
    return ref;
  }

  join() {
    const config = {
      broadcast: { self: false, ack: false },
      presence: { key: "", enabled: false },
      postgres_changes: [],
      private: true,
    };
    if (this.lastSeq !== null) config.velocity = { since_seq: this.lastSeq };
    this.joinRef = String(this.ref + 1);
    this.joinReplyRef = this.send(this.topic, "phx_join",
      { access_token: this.token, config }, this.joinRef);
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => this.send("phoenix", "heartbeat", {}, null),
      HEARTBEAT_MS);
  }

  receive(message) {
    if (message.topic !== this.topic) return;
    const payload = message.payload || {};
    if (message.event === "phx_reply" && message.ref === this.joinReplyRef) {
      this.joined(payload);
    } else if (message.event === "broadcast") {
      this.broadcast(payload);
    } else if (message.event === "system" && payload.code === "resync") {
      this.lastSeq = payload.head_seq ?? this.lastSeq;
      this.onResync();
    } else if (message.event === "phx_close" || message.event === "phx_error") {
      this.socket.close();
    }
  }

  joined(reply) {
    if (reply.status !== "ok") {
      const reason = (reply.response && reply.response.reason) || "refused";
      if (FINAL_REASONS.has(reason)) {
        this.closed = true;
        this.onState("refused", reason);
        this.socket.close();
      } else {
        this.socket.close();
      }
      return;
    }
    this.attempt = 0;
    const head = reply.response && reply.response.velocity && reply.response.velocity.head_seq;
    if (this.lastSeq === null && typeof head === "number") this.lastSeq = head;
    this.onState("joined");
  }

  broadcast(envelope) {
    let type = envelope.event;
    let payload = envelope.payload || {};
    if (type === "velocity:part") {
      const whole = this.assemble(payload);
      if (!whole) return;
      [type, payload] = whole;
    }
    const seq = payload.seq;
    if (typeof seq === "number" && this.lastSeq !== null) {
      if (seq <= this.lastSeq) return; // a replayed duplicate
      if (seq > this.lastSeq + 1) {
        this.socket.close(); // a gap: reconnect and replay from lastSeq
        return;
      }
    }
    if (typeof seq === "number") this.lastSeq = seq;
    this.onEvent(type, payload);
  }

  assemble(part) {
    const parts = this.parts.get(part.seq) || [];
    parts[part.index] = part.data;
    this.parts.set(part.seq, parts);
    if (parts.filter((data) => data !== undefined).length < part.count) return null;
    this.parts.delete(part.seq);
    return [part.event, JSON.parse(parts.join(""))];
  }
}
