// The Moorage web console: a client of the public APIs only (WebSocket v1 for a
// session's live frames, the HTTP API for lists and files), so it doubles as
// their reference client. docs/console.md says what it does and why.
//
// Everything the agent or a user wrote is put into the page as text
// (textContent), never as markup. The token stays in this tab
// (sessionStorage) and goes out as a header or the `bearer.` subprotocol,
// never in a URL.

const TOKEN_KEY = "moorage.token";
const PING_S = 25; // keeps idle proxies from closing a quiet socket (pings are not activity)

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// -- the HTTP API ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const api = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",

  async request(method, path, body) {
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let payload;
    if (body instanceof FormData) payload = body;
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const response = await fetch(path, { method, headers, body: payload, cache: "no-store" });
    if (!response.ok) {
      let code = `http_${response.status}`;
      let message = response.statusText || code;
      try {
        // Two shapes: the Managed Agents envelope and the WebSocket API's own.
        const data = await response.json();
        code = data.error?.details?.error_code || data.code || code;
        message = data.error?.message || data.message || message;
      } catch {
        /* not JSON: keep the status */
      }
      throw new ApiError(response.status, code, message);
    }
    return response;
  },
  async json(method, path, body) {
    return (await this.request(method, path, body)).json();
  },
};

// -- formatting -----------------------------------------------------------------

const usd = (amount) => `$${amount < 0.01 && amount > 0 ? amount.toFixed(4) : amount.toFixed(2)}`;
const bytes = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);

function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

function summarize(name, input) {
  if (input && typeof input.command === "string") return `${name}: ${input.command.split("\n")[0]}`;
  if (input && typeof input.file_path === "string") return `${name}: ${input.file_path}`;
  if (input && typeof input.pattern === "string") return `${name}: ${input.pattern}`;
  return name;
}

function base64Blob(data, type) {
  const raw = atob(data);
  const buf = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) buf[i] = raw.charCodeAt(i);
  return new Blob([buf], { type });
}

// What a client is told for each stable error code (docs/protocol.md).
const EXPLAIN = {
  sandbox_crashed: "The sandbox crashed. The conversation and /workspace are saved: reconnect to go on in a fresh sandbox.",
  sandbox_out_of_memory: "The sandbox ran out of memory. Reconnect to go on in a fresh sandbox.",
  sandbox_pids_exhausted: "The sandbox ran out of processes. Reconnect to go on in a fresh sandbox.",
  sandbox_start_failed: "The sandbox could not start.",
  budget_exceeded: "The budget is spent: no more turns can run in this session.",
  rate_limited: "Too fast: ",
  queue_full: "Too many messages are waiting; this one was not taken. Wait for the running turn.",
  turn_timeout: "The turn ran too long and was stopped.",
  service_draining: "The service is restarting.",
  session_deleted: "This session was deleted.",
  session_not_found: "No such session (or it is not yours).",
  too_many_sessions: "The service is at capacity. Try again shortly.",
  store_unavailable: "The database cannot be reached. Try again shortly.",
  slow_consumer: "This page fell behind.",
  storage_quota_exceeded: "Your storage quota is used up: ",
  agent_not_found: "No such agent.",
  agent_archived: "That agent is archived.",
};
// Fatal errors after which reconnecting right away is the right thing.
const AUTO_RECONNECT = new Set(["service_draining", "slow_consumer", "session_locked", "store_unavailable"]);
// Fatal errors after which reconnecting cannot help.
const FINAL = new Set(["session_deleted", "session_not_found", "agent_not_found", "agent_archived", "invalid_after", "invalid_request"]);

function explain(frame) {
  const known = EXPLAIN[frame.code];
  if (!known) return frame.message || frame.code;
  return known.endsWith(": ") ? known + (frame.message || "") : known;
}

// -- the transcript -------------------------------------------------------------

class Transcript {
  constructor(list, chat) {
    this.list = list;
    this.chat = chat;
    this.tools = new Map(); // tool_use id -> its <details>
    this.requests = new Map(); // permission / custom tool request id -> its card
    this.queued = []; // user bubbles waiting behind a running turn, oldest first
    this.lastUser = null;
    this.streaming = null; // the bubble partial text deltas go into
    this.costSeen = 0; // the session's cumulative cost at the previous result
    this.turnStarted = null;
    this.inputTokens = 0;
    this.outputTokens = 0;
    this.turns = 0;
  }

  add(node) {
    const list = this.list;
    const follow = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    list.append(node);
    if (follow) list.scrollTop = list.scrollHeight;
    return node;
  }

  content(blocks) {
    if (typeof blocks === "string") return [el("div", { class: "text", text: blocks })];
    const parts = [];
    for (const block of blocks || []) {
      if (block.type === "text") parts.push(el("div", { class: "text", text: block.text }));
      else if (block.type === "image" && block.source?.type === "base64")
        parts.push(el("img", { src: URL.createObjectURL(base64Blob(block.source.data, block.source.media_type)), alt: "image" }));
      else if (block.type === "thinking")
        parts.push(el("details", { class: "tool" }, el("summary", { text: "Thinking" }), el("pre", { text: block.thinking })));
      else if (block.type === "tool_use") parts.push(this.toolUse(block));
    }
    return parts;
  }

  user(message) {
    this.lastUser = this.add(el("li", { class: "msg user", "data-kind": "user" }, this.content(message.content)));
    this.chat.inflight += 1;
  }

  markQueued(position) {
    if (!this.lastUser || this.lastUser.querySelector(".badge")) return;
    this.lastUser.append(el("span", { class: "badge", "data-badge": "queued", text: `queued #${position}` }));
    this.queued.push(this.lastUser);
  }

  started() {
    this.turnStarted = performance.now();
    const next = this.queued.shift(); // a turn starts: the oldest queued message runs now
    next?.querySelector(".badge")?.remove();
  }

  dropQueued(reason) {
    const next = this.queued.shift();
    if (!next) return false;
    const badge = next.querySelector(".badge");
    badge.textContent = `not run: ${reason}`;
    badge.dataset.badge = "dropped";
    this.chat.inflight = Math.max(0, this.chat.inflight - 1);
    return true;
  }

  delta(event) {
    if (event?.type !== "content_block_delta" || event.delta?.type !== "text_delta") return;
    if (!this.streaming) this.streaming = this.add(el("li", { class: "msg assistant streaming" }, el("div", { class: "text" })));
    this.streaming.firstChild.textContent += event.delta.text;
  }

  assistant(message) {
    this.streaming?.remove();
    this.streaming = null;
    const parts = this.content(message.content);
    if (parts.length) this.add(el("li", { class: "msg assistant", "data-kind": "assistant" }, parts));
  }

  toolUse(block) {
    const body = el("pre", { class: "input", text: JSON.stringify(block.input, null, 2) });
    const node = el("details", { class: "tool", "data-tool": block.name }, el("summary", { text: summarize(block.name, block.input) }), body);
    this.tools.set(block.id, node);
    return node;
  }

  toolResults(message) {
    if (!Array.isArray(message?.content)) return;
    for (const block of message.content) {
      if (block.type !== "tool_result") continue;
      const parts = typeof block.content === "string" ? [el("pre", { text: block.content })] : this.content(block.content).map((p) => (p.classList?.contains("text") ? el("pre", { text: p.textContent }) : p));
      const result = el("div", { class: `result${block.is_error ? " is-error" : ""}` }, el("strong", { text: block.is_error ? "Error" : "Result" }), parts);
      const owner = this.tools.get(block.tool_use_id);
      if (owner) owner.append(result);
      else this.add(el("li", { class: "msg" }, result));
    }
  }

  result(frame) {
    this.chat.inflight = Math.max(0, this.chat.inflight - 1);
    this.turns += 1;
    const usage = frame.usage || {};
    const input = (usage.input_tokens || 0) + (usage.cache_read_input_tokens || 0) + (usage.cache_creation_input_tokens || 0);
    const output = usage.output_tokens || 0;
    this.inputTokens += input;
    this.outputTokens += output;
    const total = typeof frame.total_cost_usd === "number" ? frame.total_cost_usd : this.costSeen;
    const turnCost = total >= this.costSeen ? total - this.costSeen : total; // a fresh CLI starts its count again
    this.costSeen = total;
    const seconds = typeof frame.duration_ms === "number" ? frame.duration_ms / 1000 : null;
    const bits = [
      frame.subtype === "success" ? "done" : `stopped: ${frame.subtype}`,
      seconds !== null ? `${seconds.toFixed(1)} s` : null,
      `${input} in / ${output} out tokens`,
      `${usd(turnCost)} this turn`,
    ].filter(Boolean);
    this.add(el("li", { class: "turn-end", "data-kind": "result", text: bits.join(" · ") }));
    this.chat.showTotals(total);
  }

  permission(frame) {
    const decide = (behavior) => () => {
      this.chat.send({ type: "permission_response", id: frame.id, behavior, ...(behavior === "deny" ? { message: "denied in the console" } : {}) });
      card.querySelectorAll("button").forEach((b) => (b.disabled = true));
    };
    const card = el(
      "li",
      { class: "msg request", "data-request": frame.id },
      el("strong", { text: `Allow ${frame.tool}?` }),
      el("pre", { text: JSON.stringify(frame.input, null, 2) }),
      el("div", { class: "actions" }, el("button", { text: "Allow", onclick: decide("allow") }), el("button", { class: "secondary", text: "Deny", onclick: decide("deny") })),
    );
    this.requests.set(frame.id, this.add(card));
  }

  customTool(frame) {
    const answer = el("textarea", { rows: 2, placeholder: "The tool's result, as the model will read it" });
    const reply = (isError) => () => {
      this.chat.send({ type: "custom_tool_result", id: frame.id, content: answer.value, is_error: isError });
      card.querySelectorAll("button, textarea").forEach((b) => (b.disabled = true));
    };
    const card = el(
      "li",
      { class: "msg request", "data-request": frame.id },
      el("strong", { text: `The agent calls your tool ${frame.name}` }),
      el("pre", { text: JSON.stringify(frame.input, null, 2) }),
      answer,
      el("div", { class: "actions" }, el("button", { text: "Send result", onclick: reply(false) }), el("button", { class: "secondary", text: "Send as error", onclick: reply(true) })),
    );
    this.requests.set(frame.id, this.add(card));
  }

  settle(id, text) {
    const card = this.requests.get(id);
    if (!card) return;
    card.classList.add("settled");
    card.querySelector(".actions")?.replaceWith(el("div", { class: "muted", "data-settled": "", text }));
    card.querySelectorAll("textarea").forEach((t) => (t.disabled = true));
  }

  output(frame) {
    const link = el("button", { class: "secondary", text: `Download ${frame.name} (${bytes(frame.size)})`, onclick: () => download(frame.file_id, frame.name) });
    const card = el("li", { class: "msg file", "data-output": frame.name }, el("strong", { text: "Output" }), link);
    this.add(card);
    if ((frame.mime_type || "").startsWith("image/")) {
      api
        .request("GET", `/v1/files/${encodeURIComponent(frame.file_id)}/content`)
        .then((r) => r.blob())
        .then((blob) => card.append(el("img", { src: URL.createObjectURL(new Blob([blob], { type: frame.mime_type })), alt: frame.name })))
        .catch((e) => card.append(el("span", { class: "error", text: `not shown: ${e.message}` })));
    }
  }

  notice(frame) {
    this.add(el("li", { class: "notice", "data-code": frame.code, text: explain(frame) }));
  }
}

async function download(fileId, name) {
  const response = await api.request("GET", `/v1/files/${encodeURIComponent(fileId)}/content`);
  const url = URL.createObjectURL(await response.blob());
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// -- one session's chat -----------------------------------------------------------

class Chat {
  constructor({ sessionId = null, agent = null }) {
    this.sessionId = sessionId;
    this.agent = agent;
    this.lastSeq = 0; // the highest durable seq rendered: a reconnect asks for what follows it
    this.replayUntil = 0; // frames up to this seq are history (the log replayed), not news
    this.inflight = 0; // accepted messages whose turn has not ended
    this.ws = null;
    this.fatal = null;
    this.retry = 0;
    this.closed = false;
    this.timer = null;
    $("transcript").replaceChildren();
    this.transcript = new Transcript($("transcript"), this);
    this.attachments = [];
    $("attachments").replaceChildren();
    $("chat-title").textContent = sessionId ? `Session ${sessionId.slice(0, 8)}` : "New session";
    $("chat-totals").textContent = "";
    hideBanner();
    this.connect();
  }

  url() {
    const base = location.origin.replace(/^http/, "ws");
    if (this.sessionId) return `${base}/v1/sessions/${encodeURIComponent(this.sessionId)}?after=${this.lastSeq}`;
    return `${base}/v1/sessions${this.agent ? `?agent=${encodeURIComponent(this.agent)}` : ""}`;
  }

  connect() {
    clearTimeout(this.timer);
    const protocols = ["moorage.v1"];
    if (api.token) protocols.push(`bearer.${api.token}`);
    const ws = new WebSocket(this.url(), protocols);
    this.ws = ws;
    this.opened = false;
    ws.onopen = () => {
      this.opened = true;
      this.retry = 0;
      this.pinger = setInterval(() => this.send({ type: "ping", id: Date.now() }), PING_S * 1000);
    };
    ws.onmessage = (event) => {
      if (ws === this.ws) this.onFrame(JSON.parse(event.data));
    };
    ws.onclose = (event) => {
      clearInterval(this.pinger);
      if (ws === this.ws) this.onClose(event);
    };
    this.render();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    this.ws?.close(1000);
  }

  send(frame) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  onFrame(frame) {
    if (typeof frame.seq === "number") {
      if (frame.seq <= this.lastSeq) return; // seen already (a replay overlapping what we had)
      this.lastSeq = frame.seq;
    }
    const t = this.transcript;
    switch (frame.type) {
      case "session":
        this.sandbox = frame.sandbox || "ready";
        this.sessionId = frame.session_id;
        this.replayUntil = frame.last_seq || 0;
        history.replaceState(null, "", `#/sessions/${frame.session_id}`);
        $("chat-title").textContent = frame.agent ? `${agentName(frame.agent.id)} v${frame.agent.version} · ${frame.session_id.slice(0, 8)}` : `Session ${frame.session_id.slice(0, 8)}`;
        if (!this.fatal) hideBanner();
        refreshSessions();
        break;
      case "user_message":
        t.user(frame.message);
        break;
      case "queued":
        t.markQueued(frame.position);
        break;
      case "system":
        if (frame.subtype === "init") t.started();
        break;
      case "stream_event":
        t.delta(frame.event);
        break;
      case "assistant":
        t.assistant(frame.message);
        break;
      case "user":
        t.toolResults(frame.message);
        break;
      case "result":
        t.result(frame);
        refreshSessions();
        break;
      case "permission_request":
        t.permission(frame);
        break;
      case "permission_response":
        t.settle(frame.id, `${frame.behavior === "allow" ? "Allowed" : "Denied"} (${frame.source || "client"})${frame.message && frame.behavior !== "allow" ? `: ${frame.message}` : ""}`);
        break;
      case "custom_tool_use":
        t.customTool(frame);
        break;
      case "custom_tool_result":
        t.settle(frame.id, `Answered (${frame.source || "client"})${frame.is_error ? " as an error" : ""}`);
        break;
      case "output_file":
        t.output(frame);
        break;
      case "status":
        this.sandbox = frame.status; // starting, building, restoring, ready: the sandbox's start, live only
        break;
      case "error":
        this.onError(frame);
        break;
      default:
        break; // pong, model_request_start/end, rescheduled (the status pill shows the start): nothing to show
    }
    this.render();
  }

  onError(frame) {
    if (frame.code === "request_not_pending") return; // another client answered first; its answer is on the way
    if (frame.code === "unauthorized") {
      this.fatal = frame;
      return;
    }
    if ((frame.code === "budget_exceeded" || frame.code === "service_draining") && this.transcript.dropQueued(frame.code)) return;
    if (typeof frame.seq === "number" && frame.seq <= this.replayUntil) {
      this.transcript.notice(frame); // what happened then (a crash since recovered from, say): history, not the state now
      return;
    }
    if (frame.fatal) {
      this.fatal = frame;
      this.inflight = 0;
      showBanner(explain(frame), true);
    } else if (frame.code === "rate_limited" || frame.code === "queue_full") {
      showBanner(explain(frame), false, null, null, true);
    } else {
      this.transcript.notice(frame);
    }
  }

  async onClose(event) {
    this.ws = null;
    this.render();
    if (this.closed) return;
    const fatal = this.fatal;
    this.fatal = null;
    if (fatal?.code === "unauthorized") return signedOut("Your token is no longer accepted.");
    if (fatal && FINAL.has(fatal.code)) return showBanner(explain(fatal), true);
    if (!this.opened) {
      // The handshake was refused: a browser is not told why, so ask the HTTP API.
      try {
        await api.json("GET", this.sessionId ? `/v1/sessions/${encodeURIComponent(this.sessionId)}` : "/v1/agents?limit=1");
      } catch (e) {
        if (e.status === 401) return signedOut("Your token is no longer accepted.");
        if (e.status === 404) return showBanner(explain({ code: "session_not_found" }), true);
      }
    }
    if (fatal && !AUTO_RECONNECT.has(fatal.code)) {
      showBanner(explain(fatal), true, "Reconnect", () => this.reconnectNow());
      return;
    }
    const delay = Math.min(10_000, 500 * 2 ** this.retry);
    this.retry += 1;
    showBanner(fatal ? `${explain(fatal)} Reconnecting…` : "Connection lost. Reconnecting…", false, "Reconnect now", () => this.reconnectNow());
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    hideBanner();
    this.retry = 0;
    this.connect();
  }

  showTotals(cost) {
    const t = this.transcript;
    $("chat-totals").textContent = `${t.turns} turn${t.turns === 1 ? "" : "s"} · ${t.inputTokens} in / ${t.outputTokens} out tokens · ${usd(cost)}`;
  }

  render() {
    const live = this.ws?.readyState === WebSocket.OPEN;
    const state = $("chat-state");
    state.textContent = live ? "connected" : this.ws ? "connecting" : "disconnected";
    state.className = `pill ${live ? "live" : "down"}`;
    const sandbox = $("sandbox-state");
    sandbox.hidden = !live || !this.sandbox || this.sandbox === "ready";
    sandbox.textContent =
      { restoring: "restoring the workspace…", building: "building the environment's packages…" }[this.sandbox] ??
      "starting the sandbox…";
    $("send").disabled = !live;
    $("working").hidden = !(live && this.inflight > 0);
    $("interrupt").hidden = !(live && this.inflight > 0);
    $("file").disabled = !live || !this.sessionId;
  }

  async attach(file) {
    const chip = el("span", { class: "chip", text: `uploading ${file.name}…` });
    $("attachments").append(chip);
    try {
      const form = new FormData();
      form.append("file", file, file.name);
      const stored = await api.json("POST", "/v1/files", form);
      const path = `/mnt/session/uploads/${safeName(file.name) || stored.id}`;
      const resources = `/v1/sessions/${encodeURIComponent(this.sessionId)}/resources`;
      let resource;
      try {
        resource = await api.json("POST", resources, { type: "file", file_id: stored.id, mount_path: path });
      } catch (e) {
        if (e.code !== "invalid_request") throw e;
        resource = await api.json("POST", resources, { type: "file", file_id: stored.id }); // the path was taken: the default one
      }
      chip.textContent = `${file.name} → ${resource.mount_path}`;
      chip.dataset.path = resource.mount_path;
      const box = $("message");
      box.value = `${box.value}${box.value && !box.value.endsWith("\n") ? "\n" : ""}(file: ${resource.mount_path})\n`;
    } catch (e) {
      chip.textContent = `${file.name}: ${e.message}`;
      chip.classList.add("error");
    }
  }
}

function safeName(name) {
  // A mount path the service accepts: one plain component, no dot files.
  return name.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+/, "").slice(0, 200);
}

// -- the page ---------------------------------------------------------------------

let chat = null;
let agents = [];

function agentName(id) {
  return agents.find((a) => a.id === id)?.name || id;
}

let bannerTimer = null;
const PASSING_S = 6; // how long a passing notice (rate limited, queue full) stays up

function showBanner(text, bad, actionText, action, passing = false) {
  clearTimeout(bannerTimer);
  if (passing) bannerTimer = setTimeout(hideBanner, PASSING_S * 1000);
  $("banner").hidden = false;
  $("banner").classList.toggle("bad", !!bad);
  $("banner-text").textContent = text;
  const button = $("banner-action");
  button.hidden = !actionText;
  if (actionText) {
    button.textContent = actionText;
    button.onclick = action;
  }
}

function hideBanner() {
  clearTimeout(bannerTimer);
  $("banner").hidden = true;
}

function renderAgents() {
  const start = (agent) => () => open({ agent });
  $("agents").replaceChildren(
    el("li", {}, el("button", { "data-agent": "", onclick: start(null) }, "Default agent", el("span", { class: "sub", text: "the operator's model, every built-in tool" }))),
    ...agents.map((a) => el("li", {}, el("button", { "data-agent": a.id, onclick: start(a.id) }, a.name, el("span", { class: "sub", text: `${a.model?.id || ""} · v${a.version}` })))),
  );
}

let listing = null; // the refresh in flight; one more is asked for at most

function refreshSessions() {
  if (listing) {
    listing.again = true;
    return;
  }
  listing = { again: false };
  const done = listing;
  loadSessions().finally(() => {
    listing = null;
    if (done.again) refreshSessions();
  });
}

async function loadSessions() {
  try {
    const page = await api.json("GET", "/v1/sessions?limit=50");
    $("sessions").replaceChildren(
      ...page.data.map((s) => {
        const cost = Number(s.usage?.list_cost?.amount || 0) / 100;
        const label = s.title || s.agent?.name || `Session ${s.id.slice(0, 8)}`;
        const current = chat?.sessionId === s.id ? "current" : "";
        return el("li", {}, el("button", { class: current, "data-session": s.id, onclick: () => (location.hash = `#/sessions/${s.id}`) }, label, el("span", { class: "sub", text: `${s.status} · ${ago(s.updated_at)} · ${usd(cost)}` })));
      }),
    );
  } catch (e) {
    if (e.status === 401) signedOut("Your token is no longer accepted.");
  }
}

function open(target) {
  chat?.close();
  $("home").hidden = true;
  $("chat").hidden = false;
  chat = new Chat(target);
}

function route() {
  const match = location.hash.match(/^#\/sessions\/([\w-]+)$/);
  if (match) {
    if (chat?.sessionId !== match[1]) open({ sessionId: match[1] });
  } else {
    chat?.close();
    chat = null;
    $("chat").hidden = true;
    $("home").hidden = false;
  }
  refreshSessions();
}

function signedOut(reason) {
  chat?.close();
  chat = null;
  api.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = reason || "";
}

async function enter() {
  const listed = await api.json("GET", "/v1/agents?limit=100");
  agents = listed.data;
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = !api.token;
  $("who").textContent = api.token ? "signed in" : "open service (no token needed on loopback)";
  renderAgents();
  route();
}

async function boot() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    api.token = $("token").value.trim();
    $("token").value = "";
    try {
      await enter();
      sessionStorage.setItem(TOKEN_KEY, api.token);
    } catch (e) {
      signedOut(e.status === 401 ? "That token was refused." : e.message);
    }
  });
  $("sign-out").addEventListener("click", () => signedOut(""));
  $("refresh").addEventListener("click", refreshSessions);
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("message").value.trim();
    if (!text || !chat) return;
    if (chat.send({ type: "user", message: { role: "user", content: text } })) {
      $("message").value = "";
      $("attachments").replaceChildren();
    }
  });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("interrupt").addEventListener("click", () => chat?.send({ type: "interrupt" }));
  $("file").addEventListener("change", (event) => {
    for (const file of event.target.files) chat?.attach(file);
    event.target.value = "";
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("online", () => chat && !chat.ws && chat.reconnectNow());
  try {
    await enter();
  } catch (e) {
    signedOut(e.status === 401 ? "" : e.message);
  }
}

boot();
