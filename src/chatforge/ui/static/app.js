// chatforge ui front end: plain JS over the JSON API in chatforge/ui/app.py (no build step, no libraries).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const kid of kids) e.append(kid);
  return e;
};

// The access token (if the server wants one) comes in the page URL once and is kept for this tab.
const params = new URLSearchParams(location.search);
if (params.get("token")) sessionStorage.setItem("chatforge-token", params.get("token"));
const TOKEN = sessionStorage.getItem("chatforge-token") || "";

async function api(path, opts = {}) {
  const headers = { "X-Chatforge-UI": "1", ...(opts.headers || {}) };
  if (TOKEN) headers["Authorization"] = "Bearer " + TOKEN;
  let body = opts.body;
  if (body !== undefined && !(body instanceof Blob) && typeof body !== "string") {
    body = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const res = await fetch(path, { method: opts.method || "GET", headers, body });
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: res.statusText }; }
  if (!res.ok) {
    const err = new Error(data.error || res.statusText);
    err.problems = data.problems || null;
    err.status = res.status;
    throw err;
  }
  return data;
}
const fileUrl = (kind, name, fname) =>
  `api/jobs/${kind}/${encodeURIComponent(name)}/file/${encodeURIComponent(fname)}` +
  (TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : "") + `${TOKEN ? "&" : "?"}t=${Date.now()}`;

// ---------------------------------------------------------------------------------------------- generated forms

function renderForm(container, sections) {
  container.textContent = "";
  for (const section of sections) {
    const fs = el("fieldset", { class: "section" }, el("legend", { text: section.name }));
    if (section.help) fs.append(el("div", { class: "note", text: section.help }));
    for (const f of section.fields) {
      let input;
      if (f.kind === "bool") {
        input = el("input", { type: "checkbox" });
        input.checked = f.default === "true";
      } else if (f.kind === "choice") {
        input = el("select");
        if (f.optional) input.append(el("option", { value: "", text: "(none)" }));
        for (const c of f.choices) input.append(el("option", { value: c, text: c }));
        input.value = f.default;
      } else {
        input = el("input", { type: "text" });
        input.value = f.default;
        if (f.kind === "list") input.placeholder = "[a, b]";
      }
      input.dataset.path = f.path;
      input.dataset.kind = f.kind;
      input.id = "f-" + f.path;
      const limits = Object.entries(f.limits || {}).map(([k, v]) => `${k} ${v}`).join(", ");
      const help = [f.type, limits, f.help].filter(Boolean).join(" · ");
      fs.append(
        el("div", { class: "field" },
          el("label", { for: input.id, text: f.path.split(".").slice(1).join(".") }),
          input,
          el("div", { class: "help", text: help }),
          el("div", { class: "field-error", "data-for": f.path }))
      );
    }
    container.append(fs);
  }
}

function formValues(container) {
  const values = {};
  for (const input of $$("[data-path]", container)) {
    values[input.dataset.path] = input.type === "checkbox" ? (input.checked ? "true" : "false") : input.value;
  }
  return values;
}

// Each problem is shown under its field; `data.train[0]` or `model.init.hidden_size` go to the nearest field.
function showProblems(scope, problems, general) {
  for (const e of $$(".field-error", scope)) e.textContent = "";
  for (const e of $$(".invalid", scope)) e.classList.remove("invalid");
  if (general) general.textContent = "";
  for (const [path, msg] of problems || []) {
    let p = path.replace(/\[\d+\]/g, "");
    let box = null;
    while (p) {
      box = scope.querySelector(`.field-error[data-for="${CSS.escape(p)}"]`);
      if (box) break;
      p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "";
    }
    if (box) {
      box.textContent += (box.textContent ? "; " : "") + msg;
      const input = scope.querySelector(`[data-path="${CSS.escape(p)}"]`);
      if (input) input.classList.add("invalid");
    } else if (general) {
      general.textContent += (path ? path + ": " : "") + msg + "\n";
    }
  }
}

// ---------------------------------------------------------------------------------------------- navigation

const state = { view: "new-run", run: null, job: null, metrics: null, chat: [] };

function show(view) {
  state.view = view;
  for (const p of $$(".panel")) p.classList.toggle("hidden", p.id !== view);
}

function badge(status) {
  return el("span", { class: "badge " + status, text: status });
}

async function refreshLists() {
  const kinds = [["runs", "#runs"], ["evals", "#evals"], ["compare", "#compares"], ["exports", "#exports"]];
  for (const [kind, sel] of kinds) {
    let data;
    try { data = await api(`api/jobs/${kind}`); } catch (e) { $("#conn").textContent = e.message; return; }
    $("#conn").textContent = "";
    const ul = $(sel);
    ul.textContent = "";
    for (const j of data.jobs) {
      const li = el("li", { class: "job-item", "data-kind": kind, "data-name": j.name },
        el("span", { class: "name", text: j.name }), badge(j.status));
      if (kind === "runs") li.classList.add("run-item");
      if (j.progress && typeof j.progress.loss === "number") {
        li.append(el("span", { class: "note", text: ` step ${j.progress.step} loss ${j.progress.loss.toFixed(3)}` }));
      }
      li.addEventListener("click", () => (kind === "runs" ? openRun(j.name) : openJob(kind, j.name)));
      if ((kind === "runs" && state.run === j.name && state.view === "run") ||
          (state.job && state.job.kind === kind && state.job.name === j.name && state.view === "job")) {
        li.classList.add("selected");
      }
      ul.append(li);
    }
    if (kind === "evals") state.evals = data.jobs;
  }
}

// ---------------------------------------------------------------------------------------------- new run

let trainSections = [];

async function loadFiles() {
  const data = await api("api/files");
  const sel = $("#data-file");
  const keep = sel.value;
  sel.textContent = "";
  for (const f of data.files) sel.append(el("option", { value: f.path, text: `${f.path} (${f.bytes} B)` }));
  if (keep) sel.value = keep;
  const evalSel = $("#eval-file");
  evalSel.textContent = "";
  for (const f of data.files) evalSel.append(el("option", { value: f.path, text: f.path }));
  return data;
}

function setField(scope, path, value) {
  const input = scope.querySelector(`[data-path="${CSS.escape(path)}"]`);
  if (input) input.value = value;
}

async function preview() {
  const form = $("#train-form");
  const v = formValues(form);
  const q = new URLSearchParams({
    file: $("#data-file").value,
    model: v["model.name_or_path"],
    template: v["template.name"] || "",
    mask: v["template.mask"] || "all_assistant",
    format: v["data.format"] || "auto",
    limit: "3",
  });
  if (v["data.dataset_info"]) q.set("dataset_info", v["data.dataset_info"]);
  if (v["data.dataset_info"] && v["data.dataset_dir"]) q.set("dataset_dir", v["data.dataset_dir"]);
  $("#preview-info").textContent = "loading…";
  $("#preview").textContent = "";
  try {
    const data = await api("api/preview?" + q.toString());
    $("#preview-info").textContent =
      `${data.total_records} records (${data.summary}); template ${data.template}; trained tokens are highlighted`;
    for (const r of data.records) {
      const body = el("pre", { class: "record" });
      for (const s of r.spans) body.append(el("span", { class: s.trained ? "trained" : "untrained", text: s.text }));
      $("#preview").append(el("div", { class: "rec" },
        el("div", { class: "note", text: `${r.title}: ${r.tokens} tokens, ${r.trained} trained` }), body));
    }
  } catch (e) {
    $("#preview-info").textContent = "preview failed: " + e.message;
  }
}

async function upload(ev) {
  const file = ev.target.files[0];
  if (!file) return;
  try {
    const res = await api("api/files/" + encodeURIComponent(file.name), { method: "PUT", body: file });
    await loadFiles();
    $("#data-file").value = res.path;
    $("#preview-info").textContent = `uploaded ${res.path}`;
  } catch (e) {
    $("#preview-info").textContent = "upload failed: " + e.message;
  }
  ev.target.value = "";
}

async function checkConfig(launch) {
  const scope = $("#new-run");
  const payload = { name: $("#run-name").value.trim(), values: formValues($("#train-form")) };
  $("#launch-status").textContent = launch ? "launching…" : "checking…";
  try {
    if (launch) {
      const res = await api("api/runs", { method: "POST", body: payload });
      showProblems(scope, [], $("#form-errors"));
      $("#launch-status").textContent = `launched ${res.name} (pid ${res.pid})`;
      await refreshLists();
      openRun(res.name);
    } else {
      const res = await api("api/validate/train", { method: "POST", body: payload });
      showProblems(scope, res.problems, $("#form-errors"));
      $("#launch-status").textContent = res.ok ? "config is valid" : `${res.problems.length} problem(s)`;
    }
  } catch (e) {
    showProblems(scope, e.problems || [["", e.message]], $("#form-errors"));
    $("#launch-status").textContent = e.problems ? `${e.problems.length} problem(s)` : e.message;
  }
}

// ---------------------------------------------------------------------------------------------- one run

const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706"];

function drawChart(svg, series) {
  const W = 320, H = 180, L = 46, R = 8, T = 8, B = 22;
  svg.textContent = "";
  const pts = series.flatMap((s) => s.points);
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  add("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "frame" });
  if (!pts.length) {
    add("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no data yet");
    return;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const fmt = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : +v.toPrecision(3));
  add("text", { x: L - 4, y: T + 9, "text-anchor": "end" }, fmt(y1));
  add("text", { x: L - 4, y: H - B, "text-anchor": "end" }, fmt(y0));
  add("text", { x: L, y: H - 6 }, `step ${x0}`);
  add("text", { x: W - R, y: H - 6, "text-anchor": "end" }, `${x1}`);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    add("polyline", { points: d, class: "series", "data-series": s.name, stroke: COLORS[i], fill: "none" });
    if (s.points.length === 1 || s.dots) {
      for (const p of s.points) add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: COLORS[i] });
    }
    add("text", { x: W - R - 4, y: T + 12 + 12 * i, "text-anchor": "end", fill: COLORS[i] }, s.name);
  });
}

function drawCharts() {
  const rows = state.metrics.rows;
  const train = rows.filter((r) => r.kind === "train");
  const evals = rows.filter((r) => r.kind === "eval");
  const xy = (list, key) => list.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]);
  drawChart($("#chart-loss"), [
    { name: "train", points: xy(train, "loss") },
    { name: "val", points: xy(evals, "val_loss"), dots: true },
  ]);
  drawChart($("#chart-lr"), [{ name: "lr", points: xy(train, "lr") }]);
  drawChart($("#chart-tps"), [{ name: "tok/s", points: xy(train, "tok_per_s") }]);
  drawChart($("#chart-acc"), [{ name: "val acc", points: xy(evals, "val_accuracy"), dots: true }]);
}

async function openRun(name) {
  if (state.run !== name) {
    state.run = name;
    state.metrics = { offset: 0, rows: [] };
    state.chat = [];
    state.evalFormFor = null;
    for (const id of ["#run-title", "#run-status", "#run-command", "#run-error", "#run-log", "#run-progress"]) {
      $(id).textContent = "";
    }
    $("#eval-form").textContent = "";
    $("#finished-tools").classList.add("hidden");
    $("#chat-log").textContent = "";
    $("#chat-status").textContent = "";
    $("#export-status").textContent = "";
    $("#eval-launch-status").textContent = "";
    $("#export-name").value = name + "-merged";
    $("#eval-name").value = name + "-eval";
  }
  show("run");
  await pollRun();
  refreshLists();
}

async function pollRun() {
  const name = state.run;
  if (!name || state.view !== "run") return;
  const [d, m] = await Promise.all([
    api(`api/jobs/runs/${encodeURIComponent(name)}`),
    api(`api/runs/${encodeURIComponent(name)}/metrics?offset=${state.metrics.offset}`),
  ]);
  if (name !== state.run) return;
  if (m.offset < state.metrics.offset) state.metrics.rows = [];
  state.metrics.rows.push(...m.rows);
  state.metrics.offset = m.offset;
  $("#run-title").textContent = name;
  const st = $("#run-status");
  st.textContent = d.status;
  st.className = "badge " + d.status;
  $("#run-command").textContent = d.command;
  const p = d.progress;
  $("#run-progress").textContent = p && typeof p.loss === "number" && typeof p.lr === "number"
    ? `step ${p.step}, loss ${p.loss.toFixed(4)}, lr ${p.lr.toExponential(2)}, ${Math.round(p.tok_per_s)} tok/s` : "";
  $("#stop-btn").disabled = d.status !== "running";
  $("#run-error").classList.toggle("hidden", !d.error);
  $("#run-error").textContent = d.error || "";
  $("#run-log").textContent = d.log || "";
  $("#run-config").textContent = d.config || "";
  $("#run-summary").textContent = d.summary ? JSON.stringify(d.summary, null, 2) : "(written when the run finishes)";
  drawCharts();
  const finished = d.status === "finished";
  $("#finished-tools").classList.toggle("hidden", !finished);
  if (finished && state.evalFormFor !== name) {
    state.evalFormFor = name;
    const s = await api(`api/schema/eval?run=${encodeURIComponent(name)}`);
    renderForm($("#eval-form"), s.sections);
  }
}

async function stopJob(kind, name) {
  await api(`api/jobs/${kind}/${encodeURIComponent(name)}/stop`, { method: "POST", body: {} });
  refreshLists();
}

async function sendChat() {
  const text = $("#chat-input").value.trim();
  if (!text) return;
  $("#chat-input").value = "";
  state.chat.push({ role: "user", content: text });
  $("#chat-log").append(el("div", { class: "chat-msg user", text }));
  $("#chat-send").disabled = true;
  $("#chat-status").textContent = "thinking… (the model loads on the first message)";
  try {
    const res = await api(`api/runs/${encodeURIComponent(state.run)}/chat`, {
      method: "POST",
      body: { messages: state.chat, max_new_tokens: parseInt($("#chat-max").value, 10) || 64 },
    });
    state.chat.push({ role: "assistant", content: res.reply });
    $("#chat-log").append(el("div", { class: "chat-msg assistant", text: res.reply }));
    $("#chat-status").textContent = `${res.completion_tokens} tokens in ${res.seconds} s (${res.finish_reason})`;
  } catch (e) {
    state.chat.pop();
    $("#chat-status").textContent = "error: " + e.message;
  } finally {
    $("#chat-send").disabled = false;
  }
}

async function exportRun() {
  $("#export-status").textContent = "starting…";
  try {
    const res = await api(`api/runs/${encodeURIComponent(state.run)}/export`, {
      method: "POST", body: { name: $("#export-name").value.trim() },
    });
    $("#export-status").textContent = `export ${res.name} started`;
    await refreshLists();
    openJob("exports", res.name);
  } catch (e) {
    $("#export-status").textContent = "error: " + e.message;
  }
}

async function launchEval() {
  const scope = $("#finished-tools");
  const payload = { name: $("#eval-name").value.trim(), values: formValues($("#eval-form")) };
  $("#eval-launch-status").textContent = "launching…";
  try {
    const res = await api("api/evals", { method: "POST", body: payload });
    showProblems(scope, [], $("#eval-errors"));
    $("#eval-launch-status").textContent = `evaluation ${res.name} started`;
    await refreshLists();
    openJob("evals", res.name);
  } catch (e) {
    showProblems(scope, e.problems || [["", e.message]], $("#eval-errors"));
    $("#eval-launch-status").textContent = e.problems ? `${e.problems.length} problem(s)` : e.message;
  }
}

// ---------------------------------------------------------------------------------------------- other jobs

async function openJob(kind, name) {
  state.job = { kind, name };
  // Clear the previous job's view at once: stale text must never pass for this job's state.
  for (const id of ["#verify-result", "#job-title", "#job-status", "#job-command", "#job-error", "#job-log"]) {
    $(id).textContent = "";
  }
  const report = $("#job-report"), imgs = $("#job-images");
  report.textContent = imgs.textContent = "";
  report.dataset.text = imgs.dataset.key = "";
  show("job");
  await pollJob();
  refreshLists();
}

async function pollJob() {
  if (!state.job || state.view !== "job") return;
  const { kind, name } = state.job;
  const d = await api(`api/jobs/${kind}/${encodeURIComponent(name)}`);
  if (!state.job || state.job.name !== name) return;
  $("#job-title").textContent = `${kind === "evals" ? "evaluation" : kind === "exports" ? "export" : "comparison"} ${name}`;
  const st = $("#job-status");
  st.textContent = d.status;
  st.className = "badge " + d.status;
  $("#job-command").textContent = d.command;
  $("#job-stop").disabled = d.status !== "running";
  $("#job-error").classList.toggle("hidden", !d.error);
  $("#job-error").textContent = d.error || "";
  $("#job-log").textContent = d.log || "";
  $("#job-export").classList.toggle("hidden", kind !== "exports");
  if (kind === "exports") {
    $("#job-model-folder").textContent = d.model_folder ? `merged model: ${d.model_folder}` : "";
    $("#verify-btn").disabled = d.status !== "finished";
    if (d.verify && !$("#verify-result").textContent) $("#verify-result").textContent = verifyText(d.verify);
  }
  const report = $("#job-report");
  const text = d.report || "";
  if (report.dataset.text !== text) {
    report.dataset.text = text;
    report.textContent = "";
    if (text) report.append(el("pre", { class: "report", text }));
  }
  const imgs = $("#job-images");
  const key = (d.images || []).join(",") + d.status;
  if (imgs.dataset.key !== key) {
    imgs.dataset.key = key;
    imgs.textContent = "";
    for (const f of d.images || []) imgs.append(el("img", { src: fileUrl(kind, name, f), alt: f, title: f }));
  }
}

function verifyText(v) {
  const lines = [
    `${v.ok ? "OK" : "FAILED"}: checksums ${v.checksums_ok ? "match" : "DO NOT match"} (${v.files} files)`,
  ];
  if (v.bad && v.bad.length) lines.push("bad: " + v.bad.join(", "));
  if (v.unlisted && v.unlisted.length) lines.push("not in SHA256SUMS: " + v.unlisted.join(", "));
  if (v.prompt) {
    lines.push(`prompt ${JSON.stringify(v.prompt)}:`);
    lines.push(`  exported model: ${JSON.stringify(v.reply_export)}`);
    lines.push(`  run (base + adapter): ${JSON.stringify(v.reply_run)}`);
    lines.push(v.same_reply ? "  same reply" : "  DIFFERENT replies");
  }
  return lines.join("\n");
}

async function verifyExport() {
  $("#verify-result").textContent = "verifying…";
  try {
    const v = await api(`api/jobs/exports/${encodeURIComponent(state.job.name)}/verify`, { method: "POST", body: {} });
    $("#verify-result").textContent = verifyText(v);
  } catch (e) {
    $("#verify-result").textContent = "error: " + e.message;
  }
}

function openCompare() {
  show("compare");
  const list = $("#compare-list");
  list.textContent = "";
  const done = (state.evals || []).filter((j) => j.status === "finished");
  if (!done.length) list.append(el("div", { class: "note", text: "no finished evaluations yet" }));
  for (const j of done) {
    const box = el("input", { type: "checkbox", value: j.name, id: "cmp-" + j.name });
    list.append(el("div", {}, box, el("label", { for: box.id, text: " " + j.name })));
  }
}

async function launchCompare() {
  const evals = $$("#compare-list input:checked").map((b) => b.value);
  try {
    const res = await api("api/compare", { method: "POST", body: { name: $("#compare-name").value.trim(), evals } });
    await refreshLists();
    openJob("compare", res.name);
  } catch (e) {
    $("#compare-status").textContent = "error: " + e.message;
  }
}

// ---------------------------------------------------------------------------------------------- start

async function start() {
  try {
    const info = await api("api/info");
    $("#workspace").textContent = `workspace ${info.workspace} · chatforge ${info.version}`;
  } catch (e) {
    $("#conn").textContent = e.status === 401 ? "access token required: open the URL printed by `chatforge ui`" : e.message;
    return;
  }
  const schema = await api("api/schema/train");
  trainSections = schema.sections;
  renderForm($("#train-form"), trainSections);
  await loadFiles();
  $("#new-run-btn").addEventListener("click", () => { show("new-run"); loadFiles(); refreshLists(); });
  $("#use-train").addEventListener("click", () => setField($("#train-form"), "data.train", `[${$("#data-file").value}]`));
  $("#use-val").addEventListener("click", () => setField($("#train-form"), "data.val", `[${$("#data-file").value}]`));
  $("#preview-btn").addEventListener("click", preview);
  $("#upload").addEventListener("change", upload);
  $("#check-btn").addEventListener("click", () => checkConfig(false));
  $("#launch-btn").addEventListener("click", () => checkConfig(true));
  $("#stop-btn").addEventListener("click", () => stopJob("runs", state.run));
  $("#job-stop").addEventListener("click", () => stopJob(state.job.kind, state.job.name));
  $("#chat-send").addEventListener("click", sendChat);
  $("#chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter") sendChat(); });
  $("#chat-clear").addEventListener("click", () => { state.chat = []; $("#chat-log").textContent = ""; });
  $("#export-btn").addEventListener("click", exportRun);
  $("#eval-btn").addEventListener("click", launchEval);
  $("#eval-use-file").addEventListener("click", () => setField($("#eval-form"), "data.val", `[${$("#eval-file").value}]`));
  $("#verify-btn").addEventListener("click", verifyExport);
  $("#compare-btn").addEventListener("click", openCompare);
  $("#compare-launch").addEventListener("click", launchCompare);
  await refreshLists();
  document.body.dataset.ready = "1";
  setInterval(async () => {
    try {
      await refreshLists();
      if (state.view === "run") await pollRun();
      if (state.view === "job") await pollJob();
    } catch (e) {
      $("#conn").textContent = "connection problem: " + e.message;
    }
  }, 1000);
}

start();
