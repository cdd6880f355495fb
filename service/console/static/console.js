// The console's script: a client of /api/v1 like any other, with the session cookie.
// Everything that came from a request or from Ansible is put into the page as text (textContent), never
// as markup.
"use strict";

const FINISHED = new Set(["successful", "failed", "canceled", "timeout", "error"]);
const FAILED_EVENTS = new Set([
  "runner_on_failed", "runner_on_unreachable", "runner_item_on_failed", "runner_on_async_failed",
]);
const POLL_MS = 2000;
// The output keeps at most this many lines in the page; earlier ones are dropped from view (the whole
// output stays a download away), so a long run never makes the page slow.
const MAX_OUTPUT_LINES = 5000;
const CHUNK_LINES = 200;
// Time spent drawing lines per animation frame: a replay of a long output is drawn in slices and the page
// stays usable meanwhile.
const DRAW_BUDGET_MS = 8;
const MAX_EVENT_ROWS = 500;

// ---- small helpers -----------------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function utc(iso) {
  return iso ? iso.replace("T", " ").replace(/(\.\d+)?(Z|[+-]00:00)$/, "") : "";
}

function duration(job, now) {
  if (!job.started_at) return "";
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  const seconds = Math.max(0, (end - Date.parse(job.started_at)) / 1000);
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function describeSource(source) {
  if (!source || source.type !== "git") return "bundled";
  return `${source.repo} @ ${source.ref}`;
}

function statusBadge(status) {
  return el("span", { className: `status status-${status}`, textContent: status });
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    ...options,
    headers: { Accept: "application/json", ...(options.headers || {}) },
  });
  if (response.status === 401) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiError(401, "logged out");
  }
  if (response.status === 304) return { response, body: null };
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.detail) || `HTTP ${response.status}`);
  }
  return { response, body };
}

function showError(id, message) {
  const node = document.getElementById(id);
  if (!node) return;
  node.textContent = message;
  node.hidden = !message;
}

// ---- ANSI colours ------------------------------------------------------------------------------------

// Select Graphic Rendition codes to classes; every other escape sequence is dropped.
const ESCAPE = /\x1b\[([0-9;]*)([A-Za-z])|\x1b[^[]?/g;

class AnsiState {
  constructor() {
    this.reset();
  }
  reset() {
    this.fg = null;
    this.bg = null;
    this.bold = false;
    this.underline = false;
  }
  apply(params) {
    const codes = params === "" ? [0] : params.split(";").map(Number);
    for (const code of codes) {
      if (code === 0) this.reset();
      else if (code === 1) this.bold = true;
      else if (code === 4) this.underline = true;
      else if (code === 22) this.bold = false;
      else if (code === 24) this.underline = false;
      else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) this.fg = code;
      else if (code === 39) this.fg = null;
      else if ((code >= 40 && code <= 47) || (code >= 100 && code <= 107)) this.bg = code;
      else if (code === 49) this.bg = null;
    }
  }
  // The colours a line leaves behind, for a line that is not drawn.
  consume(text) {
    for (const match of text.matchAll(ESCAPE)) if (match[2] === "m") this.apply(match[1]);
  }
  className() {
    const names = [];
    if (this.fg !== null) names.push(`ansi-fg-${this.fg}`);
    if (this.bg !== null) names.push(`ansi-bg-${this.bg}`);
    if (this.bold) names.push("ansi-bold");
    if (this.underline) names.push("ansi-underline");
    return names.join(" ");
  }
}

function renderLine(text, state) {
  const line = document.createElement("div");
  line.className = "line";
  let last = 0;
  const add = (part) => {
    if (!part) return;
    const className = state.className();
    line.append(className ? el("span", { className, textContent: part }) : document.createTextNode(part));
  };
  ESCAPE.lastIndex = 0;
  for (let match; (match = ESCAPE.exec(text)); ) {
    add(text.slice(last, match.index));
    if (match[2] === "m") state.apply(match[1]);
    last = ESCAPE.lastIndex;
  }
  add(text.slice(last));
  return line;
}

// ---- the job list ------------------------------------------------------------------------------------

function jobsPage() {
  const params = new URLSearchParams(location.search);
  const query = new URLSearchParams();
  for (const name of ["status", "playbook", "label", "cursor", "limit"]) {
    const value = params.get(name);
    if (value) query.set(name, value);
  }
  if (!query.has("limit")) query.set("limit", "50");
  document.getElementById("filter-status").value = params.get("status") || "";
  document.getElementById("filter-playbook").value = params.get("playbook") || "";
  document.getElementById("filter-label").value = params.get("label") || "";
  const tbody = document.querySelector("#jobs tbody");
  let etag = null;
  let items = [];

  function render() {
    const now = Date.now();
    const rows = items.map((job) => {
      const row = el("tr");
      row.dataset.jobId = job.id;
      row.dataset.status = job.status;
      const labels = Object.entries(job.labels || {}).map(([key, value]) => el("span", { className: "label", textContent: `${key}=${value}` }));
      row.append(
        el("td", { className: "status" }, statusBadge(job.status),
          job.waiting_for ? el("span", { className: "hint", textContent: " waiting for a lock" }) : ""),
        el("td", { className: "playbook" }, el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, textContent: job.playbook })),
        el("td", { className: "source", textContent: describeSource(job.source) }),
        el("td", { className: "submitted-by", textContent: job.submitted_by || "" }),
        el("td", { className: "labels" }, ...labels),
        el("td", { className: "created", textContent: utc(job.created_at) }),
        el("td", { className: "duration", textContent: duration(job, now) }),
      );
      return row;
    });
    tbody.replaceChildren(...rows);
    document.getElementById("no-jobs").hidden = items.length > 0;
  }

  async function load() {
    try {
      const { response, body } = await api(`/api/v1/jobs?${query}`, etag ? { headers: { "If-None-Match": etag } } : {});
      if (body) {
        etag = response.headers.get("ETag");
        items = body.items;
        const older = document.getElementById("older");
        if (body.next_cursor) {
          const next = new URLSearchParams(params);
          next.set("cursor", body.next_cursor);
          older.href = `/?${next}`;
        }
        older.hidden = !body.next_cursor;
        const first = new URLSearchParams(params);
        first.delete("cursor");
        const newest = document.getElementById("newest");
        newest.href = `/?${first}`;
        newest.hidden = !params.get("cursor");
      }
      render();
      showError("list-error", "");
    } catch (error) {
      showError("list-error", `Could not load the jobs: ${error.message}`);
    }
  }

  load();
  setInterval(() => {
    if (!document.hidden) load();
  }, POLL_MS);
}

// ---- one job -----------------------------------------------------------------------------------------

function requestOf(job) {
  const request = {};
  for (const name of ["playbook", "source", "inventory", "extra_vars", "limit", "tags", "skip_tags", "check",
    "diff", "verbosity", "forks", "timeout", "priority", "labels", "exclusive", "locks"]) {
    if (job[name] !== null && job[name] !== undefined) request[name] = job[name];
  }
  return request;
}

function jobPage() {
  let job = JSON.parse(document.getElementById("job-data").textContent);
  const canRun = document.body.dataset.canRun === "true";
  // The output box lays its content out from the bottom (CSS column-reverse): it stays at the end as lines
  // are added unless the reader scrolled up, with no script reading the layout.
  const output = document.getElementById("output-lines");
  const ansi = new AnsiState();
  const pending = [];
  const events = [];
  let lastSeq = 0;
  let trimmed = 0;
  let drawing = false;
  // "ended" is told once the last line is drawn, not when the stream's end arrives.
  let streamEnded = false;

  function showJob(next) {
    job = next;
    const status = document.getElementById("job-status");
    status.textContent = job.status;
    status.className = `status status-${job.status}`;
    status.dataset.status = job.status;
    const reason = document.getElementById("job-reason");
    reason.textContent = job.reason || "";
    reason.hidden = !job.reason;
    document.getElementById("job-created").textContent = utc(job.created_at);
    document.getElementById("job-started").textContent = utc(job.started_at) || "not yet";
    document.getElementById("job-finished").textContent = utc(job.finished_at) || (FINISHED.has(job.status) ? "" : "not yet");
    document.getElementById("job-duration").textContent = duration(job, Date.now());
    document.getElementById("job-source").textContent = describeSource(job.source);
    document.getElementById("job-commit").textContent = job.source_commit || "—";
    document.getElementById("job-submitted-by").textContent = job.submitted_by || "";
    document.getElementById("job-targets").textContent =
      (job.targets ? job.targets.join(", ") : "not resolved") + (job.exclusive ? " (exclusive)" : "");
    document.getElementById("job-locks").textContent = job.locks && job.locks.length ? job.locks.join(", ") : "—";
    showWaiting(job.waiting_for);
    document.getElementById("job-request").textContent = JSON.stringify(requestOf(job), null, 2);
    const cancel = document.getElementById("cancel");
    if (cancel) cancel.hidden = FINISHED.has(job.status);
    if (job.host_stats) showRecap(job.host_stats);
  }

  function showWaiting(waiting) {
    const line = document.getElementById("job-waiting");
    line.hidden = !waiting;
    if (!waiting) return;
    const what = [];
    if (waiting.hosts.length) what.push(`hosts ${waiting.hosts.join(", ")}`);
    if (waiting.locks.length) what.push(`locks ${waiting.locks.join(", ")}`);
    line.replaceChildren(`Waiting for ${what.join(" and ")}, held by or promised to `);
    waiting.jobs.forEach((id, index) => {
      if (index) line.append(", ");
      line.append(el("a", { href: `/jobs/${encodeURIComponent(id)}`, textContent: id.slice(0, 8) }));
    });
  }

  function showRecap(stats) {
    const failing = (s) => (s.failures || 0) + (s.unreachable || 0);
    const hosts = Object.keys(stats).sort((a, b) => (failing(stats[b]) > 0) - (failing(stats[a]) > 0) || a.localeCompare(b));
    const rows = hosts.map((host) => {
      const s = stats[host];
      const row = el("tr", { className: failing(s) ? "bad" : "" }, el("th", { scope: "row", textContent: host }));
      row.dataset.host = host;
      for (const name of ["ok", "changed", "failures", "unreachable", "skipped", "rescued", "ignored"]) {
        row.append(el("td", { textContent: String(s[name] || 0) }));
      }
      return row;
    });
    document.querySelector("#recap tbody").replaceChildren(...rows);
    document.getElementById("recap").hidden = false;
    document.getElementById("recap-empty").hidden = true;
  }

  // Output: lines wait in `pending` and are drawn a slice per frame, into blocks of CHUNK_LINES lines (the
  // browser lays out and paints only the blocks in view; the oldest block goes as a whole).
  let shown = 0;

  function addOutput(text) {
    if (!text) return;
    for (const line of text.replace(/\r\n/g, "\n").split("\n")) pending.push(line);
    if (pending.length > MAX_OUTPUT_LINES) {
      // They would be dropped from the page as soon as drawn: skip drawing them at all.
      const skipped = pending.length - MAX_OUTPUT_LINES;
      for (const line of pending.splice(0, skipped)) ansi.consume(line);
      dropped(skipped + shown);
      shown = 0;
      output.replaceChildren();
    }
    if (!drawing) {
      // The first slice goes in at once; the rest, if any, a frame at a time.
      drawing = true;
      queueMicrotask(draw);
    }
  }

  function dropped(count) {
    trimmed += count;
    const note = document.getElementById("output-trimmed");
    note.hidden = trimmed === 0;
    note.textContent = `The first ${trimmed} lines are not shown here: download the output for all of it.`;
  }

  function draw() {
    const until = performance.now() + DRAW_BUDGET_MS;
    let drawn = 0;
    while (drawn < pending.length && (drawn % 64 !== 0 || performance.now() < until)) {
      let chunk = output.lastElementChild;
      if (!chunk || chunk.childElementCount >= CHUNK_LINES) chunk = output.appendChild(el("div", { className: "chunk" }));
      const room = Math.min(CHUNK_LINES - chunk.childElementCount, pending.length - drawn, 64);
      const fragment = document.createDocumentFragment();
      for (const line of pending.slice(drawn, drawn + room)) fragment.append(renderLine(line, ansi));
      chunk.append(fragment);
      drawn += room;
    }
    pending.splice(0, drawn);
    shown += drawn;
    while (output.firstElementChild && shown - output.firstElementChild.childElementCount >= MAX_OUTPUT_LINES) {
      const oldest = output.firstElementChild;
      shown -= oldest.childElementCount;
      dropped(oldest.childElementCount);
      oldest.remove();
    }
    if (pending.length) requestAnimationFrame(draw);
    else {
      drawing = false;
      output.dataset.lines = String(trimmed + shown);
      if (streamEnded) setStreamState("ended");
    }
  }

  // Events: kept as data, drawn when the list is open.
  const eventHost = document.getElementById("event-host");
  const eventFailed = document.getElementById("event-failed");
  const eventsSection = document.getElementById("events-section");
  let eventsDirty = false;

  function drawEvents() {
    eventsDirty = false;
    if (!eventsSection.open) return;
    const host = eventHost.value.trim();
    const matching = events.filter((e) => (!host || e.host === host) && (!eventFailed.checked || FAILED_EVENTS.has(e.event)));
    const shown = matching.slice(-MAX_EVENT_ROWS);
    const rows = shown.map((e) => {
      const row = el("tr", { className: FAILED_EVENTS.has(e.event) ? "bad" : "" },
        el("td", { textContent: String(e.seq) }), el("td", { textContent: e.event }),
        el("td", { textContent: e.host || "" }), el("td", { textContent: e.task || "" }),
        el("td", { textContent: utc(e.created) }));
      row.dataset.seq = String(e.seq);
      return row;
    });
    document.querySelector("#events tbody").replaceChildren(...rows);
    const note = document.getElementById("events-note");
    note.hidden = matching.length <= MAX_EVENT_ROWS;
    note.textContent = `The last ${MAX_EVENT_ROWS} of ${matching.length} matching events.`;
  }
  eventHost.addEventListener("input", drawEvents);
  eventFailed.addEventListener("change", drawEvents);
  eventsSection.addEventListener("toggle", drawEvents);

  function onEvent(item) {
    if (item.seq <= lastSeq) return; // already shown: a resumed stream never repeats a line
    lastSeq = item.seq;
    addOutput(item.stdout);
    events.push({ seq: item.seq, event: item.event, host: item.host, task: item.task, created: item.created });
    if (!eventsDirty && eventsSection.open) {
      eventsDirty = true;
      setTimeout(drawEvents, 250);
    }
  }

  // The stream, read with fetch: it carries the cookie, resumes after the last event seen, and gets every
  // event whatever its name (EventSource only hands over the names it was told).
  function setStreamState(state) {
    document.body.dataset.streamState = state;
    const words = { open: "live", waiting: "reconnecting…", ended: "" };
    document.getElementById("stream-state").textContent = words[state] || "";
  }

  async function follow() {
    let delay = 500;
    for (;;) {
      let ended = false;
      try {
        const response = await fetch(`/api/v1/jobs/${job.id}/stream?brief=true&after=${lastSeq}`, {
          credentials: "same-origin",
          headers: { Accept: "text/event-stream" },
        });
        if (response.status === 401) {
          location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
          return;
        }
        if (response.status === 404) {
          showError("action-error", "This job no longer exists.");
          setStreamState("ended");
          return;
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        setStreamState("open");
        delay = 500;
        ended = await readMessages(response.body, (message) => {
          if (message.event === "end") {
            showJob(JSON.parse(message.data));
            return true;
          }
          onEvent(JSON.parse(message.data));
          return false;
        });
      } catch (error) {
        // The server restarted or the network dropped: resume below.
      }
      if (ended) {
        streamEnded = true;
        if (!drawing) setStreamState("ended");
        return;
      }
      setStreamState("waiting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  async function readMessages(body, handle) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value.replace(/\r\n?/g, "\n");
      // Messages are cut out by position: the buffer is copied once per chunk, not once per message.
      let start = 0;
      let end;
      let since = performance.now();
      while ((end = buffer.indexOf("\n\n", start)) >= 0) {
        const message = parseMessage(buffer.slice(start, end));
        start = end + 2;
        if (message && handle(message)) {
          reader.cancel().catch(() => {});
          return true;
        }
        if (performance.now() - since > DRAW_BUDGET_MS) {
          // A large chunk of a replay: let the page draw and answer its reader in between.
          await new Promise((resolve) => setTimeout(resolve, 0));
          since = performance.now();
        }
      }
      buffer = buffer.slice(start);
    }
  }

  function parseMessage(block) {
    const message = { event: "message", data: [] };
    for (const line of block.split("\n")) {
      const colon = line.indexOf(":");
      if (colon === 0) continue; // a keep-alive comment
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") message.event = value;
      else if (field === "data") message.data.push(value);
    }
    if (!message.data.length) return null;
    message.data = message.data.join("\n");
    return message;
  }

  // Status and timings while the run goes on (the stream carries output, not state changes).
  let jobTag = null;
  async function poll() {
    if (FINISHED.has(job.status)) return;
    if (!document.hidden) {
      try {
        const { response, body } = await api(`/api/v1/jobs/${job.id}`, jobTag ? { headers: { "If-None-Match": jobTag } } : {});
        if (body) {
          jobTag = response.headers.get("ETag");
          showJob(body);
        } else {
          document.getElementById("job-duration").textContent = duration(job, Date.now());
        }
      } catch (error) {
        // The stream's reconnection says when the service is away; the next poll tries again.
      }
    }
    setTimeout(poll, POLL_MS);
  }

  const cancel = document.getElementById("cancel");
  if (cancel) {
    cancel.addEventListener("click", async () => {
      if (!confirm("Cancel this run?")) return;
      try {
        const { body } = await api(`/api/v1/jobs/${job.id}/cancel`, { method: "POST" });
        showJob(body);
        showError("action-error", "");
      } catch (error) {
        showError("action-error", `Could not cancel: ${error.message}`);
      }
    });
  }
  const again = document.getElementById("run-again");
  if (again && canRun) {
    again.addEventListener("click", async () => {
      again.disabled = true;
      try {
        const { body } = await api("/api/v1/jobs", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(requestOf(job)),
        });
        location.assign(`/jobs/${body.id}`);
      } catch (error) {
        showError("action-error", `Could not start it again: ${error.message}`);
        again.disabled = false;
      }
    });
  }

  showJob(job);
  follow();
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "jobs") jobsPage();
  else if (page === "job") jobPage();
});
