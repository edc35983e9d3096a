// codeloop's browser page: plain JavaScript, no build step, no third-party code.
//
// The API key lives in localStorage and only ever travels in an Authorization header.
// EventSource cannot send headers, so each stream opens with a short-lived token scoped
// to its job (POST /jobs/{id}/events-token), never with the key.
//
// A stream survives a reload: the job id, the last event id (seq) and everything shown
// so far are kept in sessionStorage *together*, so the page reconnects with
// ?last_event_id=<seq> and the server sends exactly the events after it.
"use strict";

const KEY = "codeloop.apiKey";
const STATE = "codeloop.stream";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const el = (id) => document.querySelector(`[data-testid="${id}"]`);

let current = null; // {jobId, language, seq, text, status, tools, result, error}
let source = null;
let saveTimer = null;
window.codeloopDuplicates = 0; // events the page got twice (the server promises none)

// --- API calls ----------------------------------------------------------------------

function headers(withBody) {
  const h = { Accept: "application/json" };
  const key = localStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  if (withBody) h["Content-Type"] = "application/json";
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body !== undefined) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data && data.error;
    const text = error ? `${error.type}: ${error.message}` : `HTTP ${response.status}`;
    throw new Error(response.status === 401 ? `${text} (enter an API key above)` : text);
  }
  return data;
}

async function waitForJob(jobId) {
  for (;;) {
    const job = await api("GET", `/jobs/${jobId}?wait=30`);
    if (TERMINAL.has(job.status)) return job;
  }
}

function say(text) {
  el("message").textContent = text || "";
}

// --- state that survives a reload -----------------------------------------------------

function save() {
  clearTimeout(saveTimer);
  saveTimer = null;
  if (current) sessionStorage.setItem(STATE, JSON.stringify(current));
}

function saveSoon() {
  if (saveTimer === null) saveTimer = setTimeout(save, 150);
}

function restore() {
  try {
    return JSON.parse(sessionStorage.getItem(STATE) || "null");
  } catch {
    return null;
  }
}

// --- rendering ------------------------------------------------------------------------

function setStatus(status) {
  current.status = status;
  el("status").textContent = status;
  el("stop").disabled = TERMINAL.has(status);
}

function listItem(text, attrs = {}) {
  const li = document.createElement("li");
  li.textContent = text;
  for (const [name, value] of Object.entries(attrs)) li.setAttribute(name, value);
  return li;
}

function toolText(call) {
  const outcome = call.ok === undefined ? "…" : call.ok ? "ok" : "failed";
  const args = JSON.stringify(call.arguments ?? {});
  const took = call.duration_ms !== undefined ? ` ${call.duration_ms} ms` : "";
  return `${call.name}(${args}) → ${outcome}${took}`;
}

function renderTools() {
  const list = el("tool-calls");
  list.replaceChildren(
    ...current.tools.map((c) => listItem(toolText(c), { "data-call-id": c.call_id || "" })),
  );
}

function renderContext(items) {
  el("context").replaceChildren(
    ...(items || []).map((c) => {
      const label = c.title || c.path || c.id;
      const score = typeof c.score === "number" ? ` (score ${c.score.toFixed(2)})` : "";
      return listItem(`${c.source}: ${label}${score}`);
    }),
  );
}

function renderJob() {
  el("output").textContent = current.text;
  el("job-id").textContent = current.jobId;
  setStatus(current.status);
  renderTools();
  if (current.result) showResult(current.result);
  if (current.error) say(`${current.error.type}: ${current.error.message}`);
}

function showResult(result) {
  if (result.model) el("model").textContent = result.model;
  if (typeof result.code === "string") el("code").value = result.code;
  renderContext(result.context);
  if (Array.isArray(result.tool_calls) && result.tool_calls.length) {
    current.tools = result.tool_calls;
    renderTools();
  }
  const canRun = Boolean(el("code").value);
  el("run").disabled = el("lint").disabled = !canRun;
  for (const b of el("rate").querySelectorAll("button")) b.disabled = !result.generation_id;
}

// --- following a job's events ---------------------------------------------------------

function onEvent(stream, event) {
  if (stream !== source) return;
  const seq = Number.parseInt(event.lastEventId, 10);
  if (seq > 0) {
    if (seq <= current.seq) {
      window.codeloopDuplicates += 1;
      return;
    }
    current.seq = seq;
  }
  const data = JSON.parse(event.data);
  switch (event.type) {
    case "token":
      current.text += data.text;
      el("output").append(data.text);
      if (current.status === "queued") setStatus("running");
      break;
    case "status":
      if (data.status === "retrying") {
        // A worker was lost: the next attempt streams its answer from the start.
        current.text = "";
        el("output").textContent = "";
      }
      setStatus(data.status);
      if (data.result) current.result = data.result;
      break;
    case "tool_call":
      current.tools.push({ call_id: data.call_id, name: data.name, arguments: data.arguments });
      renderTools();
      break;
    case "tool_result": {
      const call = current.tools.find((c) => c.call_id === data.call_id);
      if (call) call.ok = data.ok;
      renderTools();
      break;
    }
    case "done":
      current.result = data;
      setStatus("succeeded");
      break;
    case "error":
      current.error = data;
      setStatus("failed");
      break;
    default:
      break;
  }
  if (TERMINAL.has(current.status)) finish();
  else saveSoon();
}

function finish() {
  if (source) source.close();
  source = null;
  save();
  renderJob();
  refreshHistory();
}

async function follow() {
  const job = current;
  if (source) source.close();
  source = null;
  let token;
  try {
    ({ token } = await api("POST", `/jobs/${job.jobId}/events-token`));
  } catch (error) {
    say(`cannot follow ${job.jobId}: ${error.message}`);
    return;
  }
  if (current !== job || TERMINAL.has(job.status)) return;
  const query = new URLSearchParams({ token, last_event_id: String(job.seq) });
  const stream = new EventSource(`/jobs/${job.jobId}/events?${query}`);
  source = stream;
  for (const type of ["status", "token", "tool_call", "tool_result", "done"]) {
    stream.addEventListener(type, (event) => onEvent(stream, event));
  }
  stream.addEventListener("error", (event) => {
    if (event.data !== undefined) {
      onEvent(stream, event); // the job's own `error` event
    } else if (stream.readyState === EventSource.CLOSED && source === stream) {
      // Refused (an expired token, say): ask for a new token, resume after our seq.
      setTimeout(() => current === job && !TERMINAL.has(job.status) && follow(), 1000);
    }
  });
}

// --- actions --------------------------------------------------------------------------

async function generate() {
  const task = el("task").value.trim();
  if (!task) return say("describe the task first");
  say("");
  const body = { task, language: el("language").value };
  const maxTokens = Number.parseInt(el("max-tokens").value, 10);
  if (maxTokens > 0) body.max_new_tokens = maxTokens;
  el("generate").disabled = true;
  try {
    const job = await api("POST", "/generate_code", body);
    current = {
      jobId: job.id, language: body.language, seq: 0, text: "", status: job.status,
      tools: [], result: null, error: null,
    };
    el("code").value = "";
    el("run-result").textContent = "";
    el("rate-result").textContent = "";
    el("lint-result").replaceChildren();
    renderContext([]);
    renderJob();
    showResult({});
    save();
    follow();
    refreshHistory();
  } catch (error) {
    say(error.message);
  } finally {
    el("generate").disabled = false;
  }
}

async function stop() {
  if (!current || TERMINAL.has(current.status)) return;
  try {
    await api("POST", `/jobs/${current.jobId}/cancel`);
    say("stopping…");
  } catch (error) {
    say(error.message);
  }
}

function language() {
  return (current && current.language) || el("language").value;
}

async function run() {
  const out = el("run-result");
  out.textContent = "running…";
  out.removeAttribute("data-status");
  try {
    const body = { language: language(), code: el("code").value };
    if (current && current.result && current.result.generation_id) {
      body.generation_id = current.result.generation_id;
    }
    const job = await waitForJob((await api("POST", "/execute_code", body)).id);
    if (job.status !== "succeeded") throw new Error(`execution ${job.status}`);
    const r = job.result;
    out.dataset.status = r.status;
    out.textContent =
      `${r.status} · exit ${r.exit_code} · ${r.duration_ms} ms · ${r.backend}\n` +
      (r.stdout ? `--- stdout\n${r.stdout}` : "") + (r.stderr ? `--- stderr\n${r.stderr}` : "");
    refreshHistory();
  } catch (error) {
    out.textContent = error.message;
  }
}

async function lint() {
  const list = el("lint-result");
  list.replaceChildren(listItem("linting…"));
  try {
    const body = { language: language(), code: el("code").value };
    const job = await waitForJob((await api("POST", "/lint_code", body)).id);
    if (job.status !== "succeeded") throw new Error(`lint ${job.status}`);
    const issues = job.result.issues || [];
    list.replaceChildren(
      ...(issues.length ? issues : [null]).map((i) =>
        i ? listItem(`${i.line}:${i.column} ${i.code} ${i.message}`, { "data-code": i.code })
          : listItem(`no findings (${job.result.linter})`)),
    );
    refreshHistory();
  } catch (error) {
    list.replaceChildren(listItem(error.message));
  }
}

async function rate(score) {
  const generationId = current && current.result && current.result.generation_id;
  if (!generationId) return;
  try {
    const r = await api("POST", "/feedback", { generation_id: generationId, score });
    el("rate-result").textContent =
      `rated ${score} · mean ${r.feedback_score.toFixed(2)} over ${r.feedback_count}`;
  } catch (error) {
    el("rate-result").textContent = error.message;
  }
}

async function refreshHistory() {
  try {
    const page = await api("GET", "/jobs?limit=15");
    el("history").replaceChildren(
      ...page.items.map((job) => {
        const when = new Date(job.created_at).toLocaleTimeString();
        return listItem(`${when} ${job.kind} ${job.status} ${job.id.slice(0, 8)}`, {
          "data-job-id": job.id, "data-status": job.status, "data-kind": job.kind,
        });
      }),
    );
  } catch (error) {
    el("history").replaceChildren(listItem(error.message));
  }
}

async function openJob(jobId) {
  try {
    const job = await api("GET", `/jobs/${jobId}`);
    if (job.kind !== "generate") return;
    current = {
      jobId, language: job.request.language, seq: 0, text: "", status: job.status,
      tools: [], result: null, error: job.error,
    };
    if (TERMINAL.has(job.status)) {
      current.text = (job.result && job.result.text) || "";
      current.result = job.result;
    }
    renderJob();
    save();
    if (!TERMINAL.has(job.status)) follow();
  } catch (error) {
    say(error.message);
  }
}

// --- start ----------------------------------------------------------------------------

async function start() {
  const key = el("api-key");
  key.value = localStorage.getItem(KEY) || "";
  key.addEventListener("change", () => {
    if (key.value.trim()) localStorage.setItem(KEY, key.value.trim());
    else localStorage.removeItem(KEY);
    refreshHistory();
  });
  el("generate").addEventListener("click", generate);
  el("stop").addEventListener("click", stop);
  el("run").addEventListener("click", run);
  el("lint").addEventListener("click", lint);
  el("refresh-history").addEventListener("click", refreshHistory);
  for (const button of el("rate").querySelectorAll("button")) {
    button.addEventListener("click", () => rate(Number(button.dataset.score)));
  }
  el("history").addEventListener("click", (event) => {
    const li = event.target.closest("li[data-job-id]");
    if (li) openJob(li.dataset.jobId);
  });
  el("code").addEventListener("input", () => {
    el("run").disabled = el("lint").disabled = !el("code").value;
  });
  window.addEventListener("pagehide", save);

  const config = await fetch("/ui/config").then((r) => r.json());
  el("language").replaceChildren(
    ...config.languages.map((name) => {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      return option;
    }),
  );
  el("model").textContent = config.served_model || config.model;

  const saved = restore();
  if (saved && saved.jobId) {
    current = saved;
    el("language").value = saved.language;
    renderJob();
    if (!TERMINAL.has(saved.status)) follow();
  }
  refreshHistory();
  document.body.dataset.ready = "true";
}

start();
