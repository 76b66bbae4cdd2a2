// spes dashboard: a client of the /v1 API, nothing more. Every text that
// comes from a run (answers, inputs, names) is put in the page as text
// (textContent), never as HTML.
"use strict";

const ROLES = ["viewer", "approver", "operator"];
const STATUS_MARK = {
  pending: "○", running: "▶", interrupted: "⚠", waiting: "⏸", paused: "⏸",
  completed: "✓", failed: "✗", cancelled: "⊘",
};
const FINAL = new Set(["completed", "failed", "cancelled"]);
let session = null; // { name, role, needs_token, csrf }
let cleanup = []; // closes the current page's streams and timers

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function can(role) {
  return session && ROLES.indexOf(session.role) >= ROLES.indexOf(role);
}

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.textContent = ""; }, 6000);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function duration(ms) {
  if (!(ms >= 0)) return "—";
  const s = Math.round(ms / 1000);
  if (s < 60) return ms < 10000 ? (ms / 1000).toFixed(1) + " s" : s + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + (s % 60) + " s";
  const hr = Math.floor(m / 60);
  if (hr < 48) return hr + " h " + (m % 60) + " min";
  return Math.floor(hr / 24) + " d " + (hr % 24) + " h";
}

function runDuration(r) {
  const end = FINAL.has(r.status) || r.status === "waiting" || r.status === "paused"
    ? Date.parse(r.updated_at) : Date.now();
  return duration(end - Date.parse(r.created_at));
}

function timeLeft(deadline) {
  if (!deadline) return "no deadline";
  const ms = Date.parse(deadline) - Date.now();
  return ms <= 0 ? "deadline passed" : duration(ms) + " left";
}

function statusBadge(status) {
  return h("span", { class: "badge s-" + status, "data-status": status },
    (STATUS_MARK[status] || "") + " " + status);
}

function humanBadge() {
  return h("span", { class: "badge human" }, "waiting for a human");
}

function text(v) {
  if (v === null || v === undefined) return "";
  return typeof v === "string" ? v : JSON.stringify(v, null, 2);
}

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || "HTTP " + status);
    this.status = status;
    this.code = e.code;
    this.diagnostics = e.diagnostics || [];
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) {
    if (resp.status === 401 && path !== "/v1/session") { session = null; showSignIn(); }
    throw new ApiError(resp.status, data);
  }
  return data;
}

function errorBox(e) {
  return h("div", { class: "error", role: "alert" },
    h("p", {}, e.message),
    e.diagnostics && e.diagnostics.length
      ? h("ul", {}, e.diagnostics.map((d) => h("li", {},
          (d.file ? d.file + (d.line ? ":" + d.line + (d.column ? ":" + d.column : "") : "") + ": " : ""),
          d.message, d.hint ? h("span", { class: "muted" }, " (" + d.hint + ")") : "")))
      : null);
}

function stream(path, handlers, gen) {
  if (gen !== undefined && gen !== navigation) return null;
  const es = new EventSource(path, { withCredentials: true });
  for (const [name, fn] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => fn(JSON.parse(ev.data), ev));
  }
  cleanup.push(() => es.close());
  return es;
}

function every(ms, fn, gen) {
  if (gen !== undefined && gen !== navigation) return;
  const t = setInterval(fn, ms);
  cleanup.push(() => clearInterval(t));
}

// Each navigation has a number; a page that was left while it awaited the
// API (the user went elsewhere) must not draw over the new one.
let navigation = 0;

function setMainIf(gen, ...children) {
  if (gen === navigation) setMain(...children);
}

function setMain(...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children);
}

// ---------- the diagram: the Mermaid flowchart spes writes, drawn ----------

// Parses the subset of Mermaid that `spes workflow diagram` writes: nodes
// (`id["..."]`, `id[/"..."/]`, `id[["..."]]`, `id{"..."}`, `id{{"..."}}`,
// `id((...))`), edges (`a --> b`, `a -->|"label"| b`, `a -.->|label| b`)
// and subgraphs.
function parseMermaid(src) {
  const nodes = new Map();
  const edges = [];
  const groups = [];
  const open = [];
  const unq = (s) => s.replace(/^"|"$/g, "").replace(/#quot;/g, '"');
  for (const raw of src.split("\n")) {
    const line = raw.trim();
    let m;
    if (!line || line.startsWith("flowchart")) continue;
    if ((m = line.match(/^subgraph\s+(\S+?)\[(.*)\]$/))) {
      const g = { id: m[1], label: unq(m[2]), members: [] };
      groups.push(g); open.push(g); continue;
    }
    if (line === "end") { open.pop(); continue; }
    if ((m = line.match(/^(\S+)\s+(-->|-\.->)(?:\|(.*?)\|)?\s+(\S+)$/))) {
      edges.push({ from: m[1], to: m[4], label: m[3] ? unq(m[3]) : "", dashed: m[2] === "-.->" });
      continue;
    }
    if ((m = line.match(/^([A-Za-z0-9_]+)(\(\(|\[\[|\[\/|\{\{|\[|\{)(.*?)(\)\)|\]\]|\/\]|\}\}|\]|\})$/))) {
      const shape = { "((": "circle", "[[": "human", "[/": "transform", "{{": "hex", "[": "box", "{": "diamond" }[m[2]];
      const label = unq(m[3]);
      nodes.set(m[1], { id: m[1], label, shape, step: label.split(" (")[0] });
      for (const g of open) g.members.push(m[1]);
    }
  }
  return { nodes, edges, groups };
}

// A layered drawing: each node one row below its deepest predecessor.
function drawDiagram(src, statusOf, title) {
  const { nodes, edges, groups } = parseMermaid(src);
  const layer = new Map([...nodes.keys()].map((k) => [k, 0]));
  for (let pass = 0; pass < nodes.size; pass++) {
    let changed = false;
    for (const e of edges) {
      const want = (layer.get(e.from) || 0) + 1;
      if (nodes.has(e.to) && layer.get(e.to) < want) { layer.set(e.to, want); changed = true; }
    }
    if (!changed) break;
  }
  const rows = [];
  for (const [id, l] of layer) (rows[l] = rows[l] || []).push(id);
  const W = (n) => n.shape === "circle" ? 56 : Math.min(320, 24 + 7 * Math.min(n.label.length, 44));
  const H = 40, GAP_X = 24, ROW = 86, PAD = 20;
  const widths = rows.map((r) => (r || []).reduce((s, id) => s + W(nodes.get(id)) + GAP_X, -GAP_X));
  const width = Math.max(320, ...widths) + 2 * PAD;
  const pos = new Map();
  rows.forEach((r, i) => {
    let x = PAD + (width - 2 * PAD - widths[i]) / 2;
    for (const id of r || []) {
      const w = W(nodes.get(id));
      pos.set(id, { x, y: PAD + i * ROW, w, h: H });
      x += w + GAP_X;
    }
  });
  const height = PAD * 2 + rows.length * ROW - (ROW - H);
  const NS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, ...kids) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    for (const k of kids) el.append(k);
    return el;
  };
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-labelledby": "diagram-title" });
  svg.append(s("title", { id: "diagram-title" }, title));
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))));
  for (const g of groups) {
    const ps = g.members.map((id) => pos.get(id)).filter(Boolean);
    if (!ps.length) continue;
    const x0 = Math.min(...ps.map((p) => p.x)) - 10, y0 = Math.min(...ps.map((p) => p.y)) - 22;
    const x1 = Math.max(...ps.map((p) => p.x + p.w)) + 10, y1 = Math.max(...ps.map((p) => p.y + p.h)) + 10;
    svg.append(s("rect", { class: "group", x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 6 }));
    svg.append(s("text", { x: x0 + 6, y: y0 + 14, class: "edge-label" }, g.label));
  }
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + a.w / 2, y1 = a.y + a.h, x2 = b.x + b.w / 2, y2 = b.y;
    const my = (y1 + y2) / 2;
    svg.append(s("path", { class: "edge" + (e.dashed ? " dashed" : ""), d: `M ${x1} ${y1} C ${x1} ${my}, ${x2} ${my}, ${x2} ${y2}`, "marker-end": "url(#arrow)" }));
    if (e.label) svg.append(s("text", { class: "edge-label", x: (x1 + x2) / 2 + 4, y: my }, e.label));
  }
  for (const [id, n] of nodes) {
    const p = pos.get(id);
    const st = n.shape === "circle" ? "" : statusOf(n.step);
    const mark = { done: "✓ ", waiting: "⏸ ", failed: "✗ " }[st] || "";
    const g = s("g", { class: "node" + (st ? " st-" + st : ""), "data-step": n.step, "data-status": st || "not-reached" });
    const cx = p.x + p.w / 2, cy = p.y + p.h / 2;
    if (n.shape === "circle") g.append(s("circle", { cx, cy, r: 18 }));
    else if (n.shape === "diamond" || n.shape === "hex") {
      const d = n.shape === "diamond" ? 14 : 10;
      g.append(s("polygon", { points: `${p.x},${cy} ${p.x + d},${p.y} ${p.x + p.w - d},${p.y} ${p.x + p.w},${cy} ${p.x + p.w - d},${p.y + p.h} ${p.x + d},${p.y + p.h}` }));
    } else g.append(s("rect", { x: p.x, y: p.y, width: p.w, height: p.h, rx: n.shape === "human" ? 12 : 3 }));
    if (n.shape === "human") g.append(s("rect", { x: p.x + 4, y: p.y + 4, width: p.w - 8, height: p.h - 8, rx: 9 }));
    const label = mark + n.label;
    const shown = label.length > 46 ? label.slice(0, 45) + "…" : label;
    g.append(s("title", {}, label + (st ? " — " + st : "")));
    g.append(s("text", { x: cx, y: cy + 4, "text-anchor": "middle" }, shown));
    svg.append(g);
  }
  const list = h("ul", { class: "sr-steps" }, [...nodes.values()].filter((n) => n.shape !== "circle")
    .map((n) => h("li", {}, n.label + ": " + (statusOf(n.step) || "not reached"))));
  return h("div", {},
    h("div", { class: "diagram" }, svg),
    h("details", {}, h("summary", {}, "Steps as text, and the Mermaid source"), list, h("pre", {}, src)));
}

// A step's state from the journal: done when an entry's key names it,
// waiting when an open gate's key names it, failed when the run failed
// and it is the step the error names.
function stepStatus(show) {
  const names = (key) => key.split("/").map((seg) => seg.replace(/\[.*$/, ""));
  const done = new Set(), waiting = new Set();
  for (const e of show.entries) names(e.key).forEach((n) => done.add(n));
  for (const g of show.gates) if (!g.decision) names(g.key).forEach((n) => waiting.add(n));
  const err = show.run.error || "";
  return (step) => {
    if (waiting.has(step)) return "waiting";
    if (show.run.status === "failed" && err.includes("`" + step + "`")) return "failed";
    if (done.has(step)) return "done";
    return "";
  };
}

// ---------- sign-in ----------

function renderWho() {
  const who = document.getElementById("who");
  if (!session) { who.replaceChildren(); return; }
  who.replaceChildren(
    h("span", { id: "who-name" }, session.name + " (" + session.role + ")"),
    session.needs_token ? h("button", { type: "button", id: "sign-out", onclick: signOut }, "Sign out") : null);
}

async function signOut() {
  try { await api("DELETE", "/v1/session"); } catch (e) { /* signed out anyway */ }
  session = null;
  renderWho();
  showSignIn();
}

function showSignIn(message) {
  navigation += 1;
  cleanup.forEach((f) => f()); cleanup = [];
  renderWho();
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true });
  const err = h("div", { id: "signin-error", role: "alert" }, message || "");
  const form = h("form", { class: "signin", id: "signin", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      session = await api("POST", "/v1/session", { token: input.value });
      input.value = "";
      renderWho();
      route();
    } catch (e) {
      err.replaceChildren(errorBox(e));
    }
  } },
  h("h1", {}, "Sign in"),
  h("p", {}, "Paste one of this server's access tokens ([server.tokens] in spes.toml). The page keeps a session cookie; the token is not stored."),
  h("label", { for: "token" }, "Access token"), input,
  h("p", {}, h("button", { type: "submit", class: "primary" }, "Sign in")), err);
  setMain(form);
  input.focus();
}

// ---------- runs ----------

const RUN_STATUSES = ["pending", "running", "waiting", "paused", "completed", "failed", "cancelled"];

async function pageRuns(params) {
  const gen = navigation;
  const status = params.get("status") || "", workflow = params.get("workflow") || "";
  let workflows = [];
  try { workflows = (await api("GET", "/v1/workflows")).workflows.map((w) => w.name); } catch (e) { /* the list still works */ }
  const statusSel = h("select", { id: "f-status", name: "status" }, h("option", { value: "" }, "any"),
    RUN_STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const wfSel = h("select", { id: "f-workflow", name: "workflow" }, h("option", { value: "" }, "any"),
    workflows.map((w) => h("option", { value: w, selected: w === workflow }, w)));
  const apply = () => {
    const q = new URLSearchParams();
    if (statusSel.value) q.set("status", statusSel.value);
    if (wfSel.value) q.set("workflow", wfSel.value);
    location.hash = "#/runs" + (q.toString() ? "?" + q : "");
  };
  statusSel.addEventListener("change", apply);
  wfSel.addEventListener("change", apply);
  const body = h("tbody", { id: "runs-body" });
  const pager = h("div", { class: "pager" });
  const table = h("table", { id: "runs" },
    h("caption", { class: "muted" }, "Newest first; refreshed every 2 seconds."),
    h("thead", {}, h("tr", {}, ["Status", "Workflow", "Run", "Started", "Duration", "Tokens in / out", "Error"].map((c) => h("th", { scope: "col" }, c)))),
    body);
  setMainIf(gen, h("h1", {}, "Runs"),
    h("form", { class: "filters", "aria-label": "Filters", onsubmit: (e) => { e.preventDefault(); apply(); } },
      h("label", {}, "Status", statusSel), h("label", {}, "Workflow", wfSel)),
    table, pager);
  const q = new URLSearchParams({ limit: "50" });
  if (status) q.set("status", status);
  if (workflow) q.set("workflow", workflow);
  let cursor = null;
  let usage = {};
  const row = (r) => h("tr", { "data-run": r.id },
    h("td", {}, statusBadge(r.status), r.status === "waiting" ? humanBadge() : null),
    h("td", {}, r.workflow),
    h("td", {}, h("a", { href: "#/runs/" + r.id, class: "mono" }, r.id.slice(0, 12))),
    h("td", {}, when(r.created_at)),
    h("td", {}, runDuration(r)),
    h("td", { class: "tokens" }, usage[r.id] ? usage[r.id].input_tokens + " / " + usage[r.id].output_tokens : "—"),
    h("td", { class: "error" }, r.error ? r.error.slice(0, 120) : ""));
  const load = async () => {
    try {
      const page = await api("GET", "/v1/runs?" + q);
      usage = page.usage || {};
      body.replaceChildren(...(page.runs.length ? page.runs.map(row) : [h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No runs."))]));
      cursor = page.next_cursor;
      pager.replaceChildren(cursor ? h("button", { type: "button", id: "older", onclick: older }, "Older runs") : "");
    } catch (e) { pager.replaceChildren(errorBox(e)); }
  };
  const older = async () => {
    const q2 = new URLSearchParams(q); q2.set("cursor", cursor);
    const page = await api("GET", "/v1/runs?" + q2);
    Object.assign(usage, page.usage || {});
    body.append(...page.runs.map(row));
    cursor = page.next_cursor;
    if (!cursor) pager.replaceChildren();
  };
  await load();
  every(2000, () => { if (body.children.length <= 50) load(); }, gen);
}

function sumUsage(entries) {
  let input = 0, output = 0, calls = 0;
  for (const e of entries) {
    const u = e.kind === "model" && e.payload && e.payload.response && e.payload.response.usage;
    if (u) { input += u.input_tokens || 0; output += u.output_tokens || 0; calls++; }
  }
  return { input, output, calls };
}

async function pageRun(id) {
  const gen = navigation;
  let show;
  try { show = await api("GET", "/v1/runs/" + encodeURIComponent(id)); } catch (e) { setMainIf(gen, h("h1", {}, "Run"), errorBox(e)); return; }
  let wf = null;
  try { wf = await api("GET", "/v1/workflows/" + encodeURIComponent(show.run.workflow)); } catch (e) { /* not in this project now */ }
  const root = h("div", { id: "run", "data-run": show.run.id });
  const promptsBox = promptsSection(show.run.id);
  setMainIf(gen, root);
  let refetching = null;
  const refetch = () => {
    if (refetching) return;
    refetching = setTimeout(async () => {
      refetching = null;
      try { show = await api("GET", "/v1/runs/" + show.run.id); render(); } catch (e) { /* keep what is shown */ }
    }, 150);
  };
  // What the run is doing now (when it executes in this server): the
  // step under way and its answer as the model streams it.
  const live = { key: null, text: "" };
  const showLive = () => {
    const box = document.getElementById("live");
    if (!box) return;
    box.replaceChildren(...(live.key
      ? [h("h2", {}, "Now"), h("p", {}, "Step ", h("code", {}, live.key), " under way"), live.text ? h("pre", { id: "live-text" }, live.text) : null]
      : []));
  };
  const render = () => { root.replaceChildren(...runView(show, wf, refetch, promptsBox)); showLive(); };
  render();
  if (!FINAL.has(show.run.status)) {
    const seen = new Set(show.entries.map((e) => e.seq));
    stream("/v1/runs/" + show.run.id + "/events", {
      step: (e) => {
        if (e.event === "step_started" && (e.kind === "llm" || !live.key)) { live.key = e.key; live.text = ""; }
        if (e.event === "step_finished" && e.key === live.key) { live.key = null; live.text = ""; }
        showLive();
      },
      token: (e) => { if (e.key !== live.key) { live.key = e.key; live.text = ""; } live.text += e.text; showLive(); },
      entry: (e) => { if (!seen.has(e.seq)) { seen.add(e.seq); show.entries.push(e); render(); } },
      status: (r) => { if (r.status !== show.run.status) { show.run.status = r.status; refetch(); } },
      end: () => refetch(),
    }, gen);
  }
}


// Kept across re-renders of a live run: what was loaded stays.
function promptsSection(runId) {
  const prompts = h("div", { id: "prompts" },
    h("button", { type: "button", id: "load-prompts", onclick: async () => {
      prompts.replaceChildren(h("p", { class: "muted" }, "Re-rendering from the journal…"));
      try {
        const doc = await api("GET", "/v1/runs/" + runId + "/prompts");
        prompts.replaceChildren(
          doc.note ? h("p", { class: "muted" }, doc.note) : "",
          ...(doc.prompts.length ? doc.prompts.map((p) => h("details", { class: "prompt", "data-key": p.key },
            h("summary", { class: "mono" }, p.key),
            p.system ? [h("h3", {}, "System"), h("pre", {}, p.system)] : null,
            p.messages.map((m) => [h("h3", {}, m.role === "user" ? "User" : "Assistant"), h("pre", {}, m.content)]),
            h("h3", {}, "Answer"), h("pre", { class: "answer" }, p.answer === null || p.answer === undefined ? "(none journaled)" : p.answer)))
            : [h("p", { class: "muted" }, "No model request yet.")]));
      } catch (e) { prompts.replaceChildren(errorBox(e)); }
    } }, "Show the prompts (re-rendered from the journal; no model is called)"));
  return prompts;
}

function runView(show, wf, refetch, promptsBox) {
  const r = show.run;
  const u = sumUsage(show.entries);
  const out = [];
  out.push(h("h1", {}, r.workflow, " ", statusBadge(r.status), r.status === "waiting" ? humanBadge() : null));
  out.push(h("dl", { class: "facts" },
    h("dt", {}, "Run"), h("dd", { class: "mono" }, r.id),
    h("dt", {}, "Workflow file"), h("dd", { class: "mono" }, r.workflow_path),
    h("dt", {}, "Started"), h("dd", {}, when(r.created_at)),
    h("dt", {}, "Duration"), h("dd", {}, runDuration(r)),
    h("dt", {}, "Model calls"), h("dd", { id: "run-calls" }, String(u.calls)),
    h("dt", {}, "Tokens"), h("dd", { id: "run-tokens" }, u.input + " in, " + u.output + " out"),
    r.provider ? [h("dt", {}, "Provider"), h("dd", {}, r.provider)] : null,
    r.owner ? [h("dt", {}, "Executed by"), h("dd", { class: "mono" }, r.owner)] : null,
    r.error ? [h("dt", {}, "Error"), h("dd", { class: "error", id: "run-error" }, r.error)] : null));
  out.push(runActions(show, wf, refetch));
  out.push(h("section", { id: "live" }));
  if (wf) {
    out.push(h("h2", {}, "Diagram"));
    if (wf.workflow_hash && wf.workflow_hash !== r.workflow_hash) out.push(h("p", { class: "muted" }, "The workflow file changed since this run started; the diagram is of the current file."));
    out.push(drawDiagram(wf.mermaid, stepStatus(show), "Diagram of " + r.workflow + ", steps marked by status"));
  }
  out.push(h("h2", {}, "Gates"));
  out.push(show.gates.length
    ? h("div", { id: "run-gates" }, show.gates.map((g) => gateCard(g, refetch, false)))
    : h("p", { class: "muted" }, "No human gate yet."));
  out.push(h("h2", {}, "Timeline"), h("p", { class: "muted" }, "Every journal entry in the order it was committed: model calls (with the provider and model that served them: a fallback or degraded slot shows here), decisions and items."));
  out.push(stepsTable(show.entries));
  out.push(h("h2", {}, "Prompts and answers"), promptsBox);
  out.push(h("h2", {}, "Inputs"), h("pre", { id: "run-inputs" }, text(r.inputs)));
  if (r.output !== null && r.output !== undefined) out.push(h("h2", {}, "Output"), h("pre", { id: "run-output" }, text(r.output)));
  out.push(h("h2", {}, "Component versions"));
  out.push(r.pins.length
    ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Component"), h("th", {}, "SHA-256"), h("th", {}, "File"))),
        h("tbody", {}, r.pins.map((p) => h("tr", {}, h("td", {}, p.reference), h("td", { class: "mono" }, p.sha256.slice(0, 16)), h("td", { class: "mono" }, p.path)))))
    : h("p", { class: "muted" }, "None."));
  return out;
}

function runActions(show, wf, refetch) {
  if (!can("operator")) return h("p", { class: "muted", id: "no-actions" }, "Your role (" + (session ? session.role : "none") + ") can watch this run but not change it.");
  const r = show.run;
  const act = (label, path, body, cls) => h("button", { type: "button", class: cls || "", "data-action": label.toLowerCase(), onclick: async () => {
    try {
      const res = await api("POST", "/v1/runs/" + r.id + "/" + path, body);
      toast(label + ": done");
      if (path === "fork") location.hash = "#/runs/" + res.run.id; else refetch();
    } catch (e) { toast(label + " failed: " + e.message); }
  } }, label);
  const steps = wf ? wf.top_steps : [];
  const at = h("select", { id: "fork-at" }, steps.map((s) => h("option", { value: s }, s)));
  return h("div", { class: "actions", role: "group", "aria-label": "Run actions" },
    !FINAL.has(r.status) && r.status !== "paused" ? act("Pause", "pause") : null,
    ["paused", "failed", "interrupted"].includes(r.status) ? act("Resume", "resume") : null,
    !FINAL.has(r.status) ? act("Cancel", "cancel", undefined, "danger") : null,
    steps.length ? h("label", {}, "Fork at step", at) : null,
    steps.length ? h("button", { type: "button", "data-action": "fork", onclick: async () => {
      try { const res = await api("POST", "/v1/runs/" + r.id + "/fork", { at: at.value }); location.hash = "#/runs/" + res.run.id; } catch (e) { toast("Fork failed: " + e.message); }
    } }, "Fork") : null);
}

function stepsTable(entries) {
  if (!entries.length) return h("p", { class: "muted" }, "No step has finished yet.");
  return h("table", { id: "steps" },
    h("thead", {}, h("tr", {}, ["#", "Step", "Kind", "Served by", "Tokens in / out", "Latency", "Recorded", "Answer"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, entries.map((e) => {
      const p = e.payload || {};
      const resp = p.response || {};
      const u = resp.usage;
      const answer = e.kind === "model" ? resp.text : e.kind === "decision" ? text(p.decision || p) : text(p.value !== undefined ? p.value : p);
      return h("tr", { "data-key": e.key, "data-seq": e.seq },
        h("td", {}, e.seq),
        h("td", { class: "mono" }, e.key),
        h("td", {}, e.kind),
        h("td", {}, e.kind === "model" ? p.provider + (resp.model || p.model ? " · " + (resp.model || p.model) : "") : ""),
        h("td", {}, u ? u.input_tokens + " / " + u.output_tokens : ""),
        h("td", {}, resp.latency_ms !== undefined ? resp.latency_ms + " ms" : ""),
        h("td", {}, when(e.recorded_at)),
        h("td", {}, answer ? h("details", {}, h("summary", {}, answer.slice(0, 60).replace(/\s+/g, " ") + (answer.length > 60 ? "…" : "")), h("pre", {}, answer)) : ""));
    })));
}

// ---------- gates ----------

function decisionText(d) {
  if (!d) return "";
  const what = d.action || d.status || "decided";
  const extra = d.reason || d.comments || (d.choice !== undefined ? "variation " + d.choice : "");
  return what + (d.by ? " by " + d.by : "") + (extra ? ": " + extra : "");
}

function gateCard(g, after, inInbox) {
  const req = g.request || {};
  const actions = req.actions || (g.kind === "choose" ? ["choose", "reject"] : ["approve", "reject"]);
  const title = g.kind === "section"
    ? "Section " + req.index + " of " + req.of + ": " + req.section
    : g.kind === "choose" ? "Choose one of " + (req.variations || []).length + " variations"
    : "Approval" + (req.max_revisions ? " (revision " + req.revision + " of at most " + req.max_revisions + ")" : "");
  const card = h("article", { class: "card gate", "data-run": g.run_id, "data-gate": g.key, "data-kind": g.kind, "aria-label": "Gate " + g.key });
  const deadline = h("span", { class: "muted deadline" }, timeLeft(g.deadline));
  card.append(h("header", {},
    h("h3", {}, title),
    inInbox ? h("a", { href: "#/runs/" + g.run_id, class: "mono" }, "run " + g.run_id.slice(0, 12)) : null,
    h("span", { class: "mono muted" }, g.key),
    h("span", { class: "muted" }, "opened " + when(g.opened_at)),
    g.decision ? null : deadline));
  if (g.kind === "choose") {
    card.append(h("div", { class: "grid variations" }, (req.variations || []).map((v, i) => h("div", { class: "variation", "data-n": i + 1 },
      h("strong", {}, "Variation " + (i + 1)), h("pre", {}, text(v)),
      !g.decision && can("approver") && actions.includes("choose")
        ? h("button", { type: "button", class: "primary", "data-action": "choose", onclick: () => decide(g, { action: "choose", n: i + 1 }, card, after) }, "Choose variation " + (i + 1))
        : null))));
  } else if (req.text !== undefined) {
    card.append(h("pre", { class: "review-text" }, text(req.text)));
  } else {
    card.append(h("pre", {}, text(req)));
  }
  if (g.decision) {
    card.append(h("p", { class: "decision" }, "Decided " + when(g.decided_at) + ": " + decisionText(g.decision)));
    return card;
  }
  if (!can("approver")) {
    card.append(h("p", { class: "muted no-decide" }, "Your role (" + (session ? session.role : "none") + ") cannot decide gates."));
    return card;
  }
  const uid = (g.run_id + g.key).replace(/[^A-Za-z0-9]/g, "");
  const comments = h("textarea", { id: "c-" + uid, name: "comments" });
  const suggest = h("textarea", { id: "s-" + uid, name: "suggest" });
  const err = h("div", { role: "alert", class: "error" });
  const need = (label) => { err.textContent = label; comments.focus(); return false; };
  const btn = (action, label, cls) => actions.includes(action)
    ? h("button", { type: "button", class: cls || "", "data-action": action, onclick: () => {
        const c = comments.value.trim();
        if (action === "reject") return c ? decide(g, { action, reason: c }, card, after) : need("Say why you reject it (comments are required).");
        if (action === "revise") return c ? decide(g, { action, comments: c, suggest: suggest.value }, card, after) : need("Say what should change (comments are required for a revision).");
        return decide(g, { action, comments: c }, card, after);
      } }, label)
    : null;
  card.append(h("div", { class: "decide" },
    h("label", { for: "c-" + uid }, actions.includes("choose") ? "Reason (required to reject)" : "Comments (required to reject or to ask for a revision)"), comments,
    actions.includes("revise") ? [h("label", { for: "s-" + uid }, "Suggested change (with a revision)"), suggest] : null,
    h("div", { class: "actions" },
      btn("approve", "Approve", "primary"), btn("revise", "Ask for a revision"), btn("reject", "Reject", "danger")),
    err));
  every(1000, () => { deadline.textContent = timeLeft(g.deadline); });
  return card;
}

async function decide(g, body, card, after) {
  card.querySelectorAll("button").forEach((b) => { b.disabled = true; });
  try {
    const res = await api("POST", "/v1/runs/" + g.run_id + "/decisions", Object.assign({ gate: g.key }, body));
    toast("Recorded: " + body.action + " by " + res.by);
    if (after) after();
  } catch (e) {
    card.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    toast("Not recorded: " + e.message);
    if (e.status === 409 && after) after();
  }
}

async function pageInbox() {
  const gen = navigation;
  const list = h("div", { id: "inbox" });
  const state = { gates: new Map() };
  const keyOf = (g) => g.run_id + " " + g.key;
  const render = () => {
    const gates = [...state.gates.values()].sort((a, b) => a.opened_at.localeCompare(b.opened_at));
    list.replaceChildren(...(gates.length ? gates.map((g) => gateCard(g, null, true)) : [h("p", { class: "muted", id: "inbox-empty" }, "Nothing waiting for a human.")]));
    setCount(gates.length);
  };
  setMainIf(gen, h("h1", {}, "Approvals"), h("p", { class: "muted" }, "Every gate waiting for a human, across runs, oldest first; live."), list);
  try {
    const all = await api("GET", "/v1/gates");
    all.gates.forEach((g) => state.gates.set(keyOf(g), g));
    render();
  } catch (e) { list.replaceChildren(errorBox(e)); }
  stream("/v1/gates/events", {
    snapshot: (s) => { state.gates.clear(); s.gates.forEach((g) => state.gates.set(keyOf(g), g)); render(); },
    opened: (g) => { state.gates.set(keyOf(g), g); render(); },
    closed: (c) => { state.gates.delete(c.run_id + " " + c.key); render(); },
  }, gen);
}

function setCount(n) {
  document.getElementById("inbox-count").textContent = n ? String(n) : "";
}

// ---------- workflows ----------

async function pageWorkflows() {
  const gen = navigation;
  let list;
  try { list = await api("GET", "/v1/workflows"); } catch (e) { setMainIf(gen, h("h1", {}, "Workflows"), errorBox(e)); return; }
  setMainIf(gen, h("h1", {}, "Workflows"),
    h("table", { id: "workflows" },
      h("thead", {}, h("tr", {}, ["Workflow", "What it does", "Steps", "Inputs", "File"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, list.workflows.map((w) => h("tr", {},
        h("td", {}, h("a", { href: "#/workflows/" + encodeURIComponent(w.name) }, w.name)),
        h("td", {}, w.description || ""),
        h("td", {}, w.steps),
        h("td", {}, w.inputs.map((i) => i.name).join(", ")),
        h("td", { class: "mono" }, w.file))))),
    list.diagnostics.length ? [h("h2", {}, "Files that do not validate"), errorBox({ message: "These workflow files are not offered:", diagnostics: list.diagnostics })] : null);
}

async function pageWorkflow(name) {
  const gen = navigation;
  let wf;
  try { wf = await api("GET", "/v1/workflows/" + encodeURIComponent(name)); } catch (e) { setMainIf(gen, h("h1", {}, name), errorBox(e)); return; }
  const fields = wf.inputs.map((i) => {
    const id = "in-" + i.name;
    const def = i.default === null || i.default === undefined ? "" : text(i.default);
    let control;
    if (i.type === "boolean") control = h("input", { id, name: i.name, type: "checkbox", checked: i.default === true });
    else if (i.type === "integer" || i.type === "number") control = h("input", { id, name: i.name, type: "number", step: i.type === "integer" ? "1" : "any", value: def, required: i.required });
    else control = h("textarea", { id, name: i.name, required: i.required }, def);
    return { i, control, el: h("div", {}, h("label", { for: id }, i.name + " (" + i.type + (i.required ? ", required" : "") + ")" + (i.description ? ": " + i.description : "")), control) };
  });
  const err = h("div", { id: "start-error" });
  const form = h("form", { id: "start", "aria-label": "Start a run", onsubmit: async (ev) => {
    ev.preventDefault();
    const inputs = {};
    for (const { i, control } of fields) {
      if (i.type === "boolean") inputs[i.name] = control.checked ? "true" : "false";
      else if (control.value !== "" || i.required) inputs[i.name] = control.value;
    }
    try {
      const res = await api("POST", "/v1/runs", { workflow: wf.name, inputs });
      location.hash = "#/runs/" + res.run.id;
    } catch (e) { err.replaceChildren(errorBox(e)); }
  } }, fields.map((f) => f.el), h("p", {}, h("button", { type: "submit", class: "primary" }, "Start run")), err);
  setMainIf(gen, h("h1", {}, wf.name), wf.description ? h("p", {}, wf.description) : null,
    h("p", { class: "muted mono" }, wf.file),
    h("h2", {}, "Start a run"),
    can("operator") ? form : h("p", { class: "muted" }, "Your role (" + (session ? session.role : "none") + ") cannot start runs."),
    h("h2", {}, "Diagram"), drawDiagram(wf.mermaid, () => "", "Diagram of " + wf.name),
    wf.components.length ? [h("h2", {}, "Components"), h("ul", {}, wf.components.map((c) => h("li", { class: "mono" }, c)))] : null);
}

// ---------- routing ----------

async function route() {
  navigation += 1;
  cleanup.forEach((f) => f());
  cleanup = [];
  if (!session) return;
  const hash = location.hash || "#/runs";
  const [path, query] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === "#/" + (parts[0] || "runs")) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  document.title = "spes · " + (parts[0] || "runs");
  if (parts[0] === "runs" && parts[1]) await pageRun(parts[1]);
  else if (parts[0] === "inbox") await pageInbox();
  else if (parts[0] === "workflows" && parts[1]) await pageWorkflow(parts[1]);
  else if (parts[0] === "workflows") await pageWorkflows();
  else await pageRuns(params);
  if (parts[0] !== "inbox") {
    api("GET", "/v1/gates").then((g) => setCount(g.gates.length)).catch(() => {});
  }
  document.getElementById("main").setAttribute("data-page", parts[0] || "runs");
}

async function start() {
  try {
    session = await api("GET", "/v1/session");
  } catch (e) {
    if (e.status === 401) { showSignIn(); return; }
    setMain(errorBox(e));
    return;
  }
  renderWho();
  route();
}

window.addEventListener("hashchange", () => { if (session) route(); else showSignIn(); });
start();
