// wbc review UI: plain JavaScript, no external code. Two views: the samples list (#/) and a sample (#/samples/ID).
"use strict";

const API = "/api/v1";
const state = {
  info: null,        // GET /info: classes with keys and colours, token_required, limits
  sample: null,      // the open sample (GET /samples/{id})
  order: [],         // cell ids in gallery order (arrow keys walk it)
  selected: null,    // selected cell id
  undo: [],          // [{cellId, from, to}] reclassifications of this page, newest last
  timers: [],
  busy: false,
};

// ---------------------------------------------------------------------------------------------- helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel, root = document) => root.querySelector(sel);
const cls = (name) => state.info.classes.find((c) => c.name === name) || {name, display_name: name, key: "", colour: "#777"};
const pct = (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(1)}`);
const interval = (iv, d = 1) => (iv ? `${Number(iv[0]).toFixed(d)}–${Number(iv[1]).toFixed(d)}` : "–");
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

function say(message, kind = "info") {
  const box = $("#status");
  box.textContent = message;
  box.className = `status ${kind}`;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { box.textContent = ""; box.className = "status"; }, kind === "error" ? 12000 : 5000);
}

class ApiError extends Error {
  constructor(status, message, data) { super(message); this.status = status; this.data = data; }
}

function authHeaders(method) {
  const token = localStorage.getItem("wbc-token");
  return method !== "GET" && token ? {Authorization: `Bearer ${token}`} : {};
}

async function api(method, path, {json, headers = {}} = {}) {
  const init = {method, headers: {...authHeaders(method), ...headers}};
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(API + path, init);
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    if (res.status === 401) askToken(true);
    throw new ApiError(res.status, (data && data.detail) || `${res.status} ${res.statusText}`, data);
  }
  return data;
}

function clearTimers() { state.timers.forEach(clearTimeout); state.timers = []; }
function later(fn, ms) { state.timers.push(setTimeout(fn, ms)); }

// ---------------------------------------------------------------------------------------------- dialogs

function ask({title, text = "", label = null, value = "", ok = "OK"}) {
  const dlg = $("#dialog");
  $("#dialog-title").textContent = title;
  $("#dialog-text").textContent = text;
  $("#dialog-field").hidden = !label;
  $("#dialog-label").textContent = label || "";
  const input = $("#dialog-input");
  input.value = value;
  input.required = Boolean(label);
  $("#dialog-ok").textContent = ok;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      resolve(dlg.returnValue === "ok" ? (label ? input.value.trim() : true) : null);
    }, {once: true});
    dlg.returnValue = "";
    dlg.showModal();
    (label ? input : $("#dialog-ok")).focus();
  });
}

async function askToken(failed = false) {
  const token = await ask({title: "API token", label: "Token",
    text: (failed ? "The server refused the token. " : "") + "This server needs its API token for changes (ask whoever started wbc serve).",
    ok: "Save"});
  if (token) { localStorage.setItem("wbc-token", token); say("Token saved for this browser."); }
}

async function reviewer() {
  const input = $("#reviewer");
  if (input.value.trim()) return input.value.trim();
  const name = await ask({title: "Who is reviewing?", label: "Your name", ok: "Continue",
    text: "Every change is recorded with the reviewer's name."});
  if (name) { input.value = name; localStorage.setItem("wbc-reviewer", name); }
  return name;
}

// ---------------------------------------------------------------------------------------------- samples list

function statusText(s) {
  if (s.signed_off_at) return `Signed off by ${s.signed_off_by}`;
  if (s.status === "analysing") return `Analysing ${Math.round(100 * s.progress)} %`;
  if (s.status === "queued") return "Queued";
  if (s.status === "failed") return `Failed: ${s.error || "unknown reason"}`;
  return s.n_review ? "Analysed: to review" : "Analysed";
}

async function showList() {
  const view = $("#view");
  view.replaceChildren($("#list-template").content.cloneNode(true));
  setupUpload();
  await refreshList();
}

async function refreshList() {
  if (!$("#samples")) return;
  let data;
  try { data = await api("GET", "/samples?limit=200"); } catch (e) { say(e.message, "error"); return; }
  const body = $("#samples tbody");
  if (!body) return;
  body.replaceChildren(...data.items.map((s) => {
    const link = h("a", {href: `#/samples/${s.id}`, text: String(s.id)});
    return h("tr", {"data-status": s.status, onclick: (ev) => { if (ev.target.tagName !== "A") location.hash = `#/samples/${s.id}`; }},
      h("td", {}, link), h("td", {text: s.reference || "—"}), h("td", {text: when(s.created_at)}),
      h("td", {text: String(s.n_fields)}), h("td", {class: `st st-${s.signed_off_at ? "signed" : s.status}`, text: statusText(s)}),
      h("td", {text: s.n_cells ?? "—"}), h("td", {text: s.n_review ?? "—"}),
      h("td", {text: s.flags.map((f) => f.replaceAll("_", " ")).join(", ") || "—"}));
  }));
  if (!data.items.length) body.append(h("tr", {}, h("td", {colspan: 8, class: "muted", text: "No samples yet: upload the fields of one above."})));
  if (data.items.some((s) => s.status === "queued" || s.status === "analysing")) later(refreshList, 1500);
}

function setupUpload() {
  const drop = $("#drop"), input = $("#files"), form = $("#upload-form");
  let files = [];
  const render = () => {
    $("#chosen").replaceChildren(...files.map((f) => h("li", {text: `${f.name} (${(f.size / 1048576).toFixed(1)} MB)`})));
    $("#upload-button").disabled = !files.length;
    $("#upload-text").textContent = files.length ? `${files.length} file(s) chosen` : "";
  };
  const add = (list) => { files = files.concat(Array.from(list)); render(); };
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  input.addEventListener("change", () => { add(input.files); input.value = ""; });
  for (const t of ["dragenter", "dragover"]) drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const t of ["dragleave", "drop"]) drop.addEventListener(t, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); add(e.dataTransfer.files); });
  form.addEventListener("submit", (e) => { e.preventDefault(); upload(form, files); });
}

function upload(form, files) {
  const data = new FormData();
  for (const f of files) data.append("files", f, f.name);
  for (const [k, v] of new FormData(form).entries()) if (typeof v === "string" && v.trim()) data.append(k, v.trim());
  const name = $("#reviewer").value.trim();
  if (name) data.append("user", name);
  const bar = $("#upload-progress"), text = $("#upload-text"), button = $("#upload-button");
  bar.hidden = false; bar.value = 0; button.disabled = true;
  $("#upload-errors").replaceChildren();
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `${API}/samples`);
  for (const [k, v] of Object.entries(authHeaders("POST"))) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) { bar.value = (100 * e.loaded) / e.total; text.textContent = `Uploading ${Math.round(bar.value)} %`; }
  };
  xhr.onerror = () => { text.textContent = "Upload failed: the server could not be reached."; button.disabled = false; };
  xhr.onload = () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    const refused = (body && (body.files || [])) || [];
    if (xhr.status === 202) {
      if (refused.length) sessionStorage.setItem("wbc-refused", JSON.stringify(refused));
      location.hash = `#/samples/${body.id}`;
      return;
    }
    if (xhr.status === 401) askToken(true);
    text.textContent = `Upload failed: ${(body && body.detail) || xhr.status}`;
    $("#upload-errors").replaceChildren(...refused.map((f) => h("li", {text: f.error})));
    button.disabled = false; bar.hidden = true;
  };
  xhr.send(data);
}

// ---------------------------------------------------------------------------------------------- sample page

async function showSample(id) {
  const view = $("#view");
  view.replaceChildren($("#sample-template").content.cloneNode(true));
  state.sample = null; state.selected = null; state.undo = []; state.order = [];
  $("#undo").addEventListener("click", undo);
  $("#signoff").addEventListener("click", signOff);
  $("#delete").addEventListener("click", deleteSample);
  $("#export").href = `${API}/samples/${id}/export.csv`;
  $("#report").href = `${API}/samples/${id}/report`;
  const refused = JSON.parse(sessionStorage.getItem("wbc-refused") || "[]");
  sessionStorage.removeItem("wbc-refused");
  $("#sample-notes").replaceChildren(...refused.map((f) => h("li", {text: `Not uploaded: ${f.error}`})));
  await loadSample(id);
}

async function loadSample(id, keepSelection = true) {
  clearTimers();
  let s;
  try { s = await api("GET", `/samples/${id}`); } catch (e) {
    $("#view").replaceChildren(h("p", {class: "error", text: e.message}), h("p", {}, h("a", {href: "#/", text: "Back to the samples"})));
    return;
  }
  if (location.hash !== `#/samples/${id}`) return;
  const previous = state.sample;
  state.sample = s;
  if (!keepSelection || !s.cells.some((c) => c.id === state.selected)) state.selected = null;
  renderHead();
  renderDifferential(previous);
  renderGallery();
  renderFields();
  if (s.status === "queued" || s.status === "analysing") later(() => loadSample(id), 1000);
  else later(() => pollVersion(id), 5000);
}

async function pollVersion(id) {  // another reviewer may be working on the same sample
  if (location.hash !== `#/samples/${id}` || !state.sample) return;
  try {
    const res = await fetch(`${API}/samples/${id}`);
    const version = Number((res.headers.get("ETag") || "").replaceAll('"', ""));
    if (res.ok && version && version !== state.sample.version && !state.busy) {
      say("This sample was changed elsewhere: reloaded.");
      return loadSample(id);
    }
  } catch (_) { /* the server is away for a moment: try again later */ }
  later(() => pollVersion(id), 5000);
}

function renderHead() {
  const s = state.sample;
  $("#sample-title").textContent = `Sample ${s.id}${s.reference ? ` — ${s.reference}` : ""}`;
  const parts = [statusText(s)];
  if (s.wbc_count !== null) parts.push(`WBC ${s.wbc_count} ×10⁹/L`);
  if (s.age !== null) parts.push(`age ${s.age}`);
  if (s.sex) parts.push(s.sex);
  parts.push(`${s.fields.length} field(s)`);
  if (s.stage && s.status === "analysing") parts.push(s.stage);
  const st = $("#sample-state");
  st.textContent = parts.join(" · ");
  st.className = `state st-${s.signed_off_at ? "signed" : s.status}`;
  const bar = $("#sample-progress");
  bar.hidden = !(s.status === "queued" || s.status === "analysing");
  bar.value = 100 * s.progress;
  const done = s.status === "done";
  const locked = Boolean(s.signed_off_at);
  $("#signoff").disabled = !done || locked;
  $("#signoff").textContent = locked ? "Signed off" : "Sign off…";
  $("#undo").disabled = locked || !state.undo.length;
  for (const a of [$("#export"), $("#report")]) a.classList.toggle("disabled", !done);
  document.body.classList.toggle("locked", locked);
}

function flagFor(d, type) {
  return (d.flag_details || []).filter((f) => f.cell === type);
}

function renderDifferential(previous) {
  const s = state.sample, box = $("#differential");
  const d = s.differential;
  if (!d) { box.replaceChildren(h("p", {class: "muted", text: s.status === "failed" ? "No result." : "Waiting for the analysis…"})); return; }
  const rel = (d.reference_ranges || {}).relative || {};
  const abs = (d.reference_ranges || {}).absolute || {};
  const before = previous && previous.differential ? previous.differential.counts || {} : null;
  const hasAbs = Boolean(d.absolute);
  const head = ["Cell type", "Count", "% (95 % CI)", "Reference %"].concat(hasAbs ? ["×10⁹/L (reference)"] : []).concat(["Flag"]);
  const rows = state.info.differential_types.map((t) => {
    const flags = flagFor(d, t);
    const count = (d.counts || {})[t] || 0;
    const changed = before && (before[t] || 0) !== count;
    const flagText = flags.map((f) => {
      const ref = f.reference || [0, 0];
      const arrow = f.value < ref[0] ? "↓ low" : "↑ high";
      return `${arrow}: ${f.flag.replaceAll("_", " ")}${f.significant ? "" : " (borderline)"}`;
    }).join("; ");
    return h("tr", {"data-type": t, class: [flags.length ? "flagged" : "", changed ? "changed" : ""].join(" ").trim() || null},
      h("th", {scope: "row"}, h("span", {class: "swatch", style: {background: cls(t).colour}, "aria-hidden": "true"}), cls(t).display_name),
      h("td", {class: "count", text: String(count)}),
      h("td", {class: "percent"}, pct(d.percent[t]), h("span", {class: "ci", text: ` (${interval(d.ci95[t])})`})),
      h("td", {text: interval(rel[t], 0)}),
      hasAbs ? h("td", {}, d.absolute[t] === undefined ? "–" : Number(d.absolute[t]).toFixed(2),
        h("span", {class: "ci", text: ` (${interval(abs[t], 1)})`})) : null,
      h("td", {class: "flag", text: flagText || "—"}));
  });
  const others = Object.entries(d.counts || {}).filter(([t]) => !state.info.differential_types.includes(t));
  const notes = [`${d.n_cells} leukocytes counted in ${d.n_images} field(s); ${d.n_review} still for review.`];
  if (d.nrbc_per_100_wbc !== null && d.nrbc_per_100_wbc !== undefined) notes.push(`Erythroblasts: ${d.nrbc_per_100_wbc} per 100 leukocytes.`);
  for (const [t, n] of others) if (t !== "erythroblast") notes.push(`${cls(t).display_name}: ${n} (not counted).`);
  notes.push(`Reference: ${(d.reference_ranges || {}).name || ""} — ${(d.reference_ranges || {}).label || ""}.`);
  const general = (d.flag_details || []).filter((f) => !state.info.differential_types.includes(f.cell) || f.basis === "count");
  box.replaceChildren(...[
    h("div", {class: "scroll"}, h("table", {class: "difftable"}, h("thead", {}, h("tr", {}, head.map((x) => h("th", {scope: "col", text: x})))), h("tbody", {}, rows))),
    h("p", {class: "muted", text: notes.join(" ")}),
    general.length ? h("ul", {class: "flags"}, general.map((f) => h("li", {text: `Flag: ${f.flag.replaceAll("_", " ")} (${f.value})`}))) : null,
    (d.warnings || []).length ? h("ul", {class: "warnings"}, d.warnings.map((w) => h("li", {}, h("strong", {text: "Warning: "}), w))) : null,
  ].filter(Boolean));
}

function galleryOrder(cells) {
  const types = state.info.differential_types.concat(state.info.classes.map((c) => c.name).filter((c) => !state.info.differential_types.includes(c)));
  const groups = new Map(types.map((t) => [t, []]));
  for (const c of cells) { if (!groups.has(c.label)) groups.set(c.label, []); groups.get(c.label).push(c); }
  for (const list of groups.values()) list.sort((a, b) => (b.review - a.review) || (a.confidence - b.confidence) || (a.number - b.number));
  return groups;
}

function renderGallery() {
  const s = state.sample, box = $("#gallery");
  renderChooser();
  if (s.status !== "done") { box.replaceChildren(h("p", {class: "muted", text: s.status === "failed" ? s.error || "The analysis failed." : "The cells appear when the analysis is done."})); return; }
  const groups = galleryOrder(s.cells);
  state.order = [];
  const parts = [];
  for (const [type, cells] of groups) {
    if (!cells.length) continue;
    const nrev = cells.filter((c) => c.review).length;
    parts.push(h("h3", {class: "group", "data-type": type}, h("span", {class: "swatch", style: {background: cls(type).colour}, "aria-hidden": "true"}),
      `${cls(type).display_name}: ${cells.length}`, nrev ? h("span", {class: "badge", text: `${nrev} for review`}) : null));
    const tiles = cells.map((c) => {
      state.order.push(c.id);
      const changed = c.label !== c.predicted_label;
      return h("button", {type: "button", class: `cell${c.review ? " for-review" : ""}${c.id === state.selected ? " selected" : ""}`,
        "data-id": c.id, "data-label": c.label, "aria-pressed": c.id === state.selected ? "true" : "false",
        title: `#${c.number} ${c.display_name}, confidence ${c.confidence.toFixed(2)}${c.review_reason ? ` (${c.review_reason})` : ""}`,
        style: {borderColor: cls(c.label).colour}, onclick: () => select(c.id, true)},
        h("img", {src: c.image_url, alt: `cell ${c.number}`, width: 96, height: 96}),
        h("span", {class: "cap"}, `#${c.number} · ${c.confidence.toFixed(2)}`),
        c.review ? h("span", {class: "tag review", text: "? review"}) : null,
        changed ? h("span", {class: "tag changed", text: `was ${cls(c.predicted_label).display_name}`}) : null,
        !changed && c.reviewed_by ? h("span", {class: "tag ok", text: "✓ checked"}) : null);
    });
    parts.push(h("div", {class: "tiles"}, tiles));
  }
  box.replaceChildren(...(parts.length ? parts : [h("p", {class: "muted", text: "No white blood cells were found."})]));
  if (state.selected === null && state.order.length && !s.signed_off_at) select(state.order[0], false);
}

function renderChooser() {
  const s = state.sample, box = $("#chooser");
  const cell = s.cells.find((c) => c.id === state.selected);
  const locked = Boolean(s.signed_off_at) || s.status !== "done";
  const label = cell ? `Cell #${cell.number}: ${cell.display_name} (${cell.confidence.toFixed(2)})${cell.review ? " — for review" : ""}` : "No cell selected";
  box.replaceChildren(h("span", {class: "selected-label", id: "selected-label", text: locked && s.signed_off_at ? "Signed off: locked" : label}),
    ...state.info.classes.map((c) => h("button", {type: "button", class: `type${cell && cell.label === c.name ? " current" : ""}`,
      disabled: locked || !cell, "data-type": c.name, style: {borderLeftColor: c.colour},
      onclick: () => cell && setLabel(cell.id, c.name)}, h("kbd", {text: c.key.toUpperCase()}), ` ${c.display_name}`)));
}

function select(id, focus) {
  state.selected = id;
  for (const el of document.querySelectorAll(".cell.selected, .box.selected")) { el.classList.remove("selected"); el.setAttribute("aria-pressed", "false"); }
  for (const el of document.querySelectorAll(`[data-id="${id}"]`)) { el.classList.add("selected"); el.setAttribute("aria-pressed", "true"); }
  const tile = $(`.cell[data-id="${id}"]`);
  if (tile) { tile.scrollIntoView({block: "nearest"}); if (focus) tile.focus({preventScroll: true}); }
  renderChooser();
}

function move(delta) {
  if (!state.order.length) return;
  const i = state.order.indexOf(state.selected);
  const j = i < 0 ? 0 : Math.max(0, Math.min(state.order.length - 1, i + delta));
  select(state.order[j], true);
}

function moveRow(dir) {  // the nearest tile one row up/down, by position on screen
  const cur = $(`.cell[data-id="${state.selected}"]`);
  if (!cur) return move(dir);
  const r = cur.getBoundingClientRect();
  let best = null, bestScore = Infinity;
  for (const el of document.querySelectorAll(".cell")) {
    const q = el.getBoundingClientRect();
    const dy = (q.top - r.top) * dir;
    if (dy < r.height / 2) continue;
    const score = dy * 4 + Math.abs(q.left - r.left);
    if (score < bestScore) { best = el; bestScore = score; }
  }
  if (best) select(Number(best.dataset.id), true);
}

async function setLabel(cellId, label, {recordUndo = true, stay = false} = {}) {
  const s = state.sample;
  const cell = s.cells.find((c) => c.id === cellId);
  if (!cell || state.busy) return;
  const user = await reviewer();
  if (!user) return;
  state.busy = true;
  const i = state.order.indexOf(cellId);
  // like a technologist's workstation: after a decision, on to the next cell (undo stays on the cell)
  const next = stay ? cellId : (state.order[i + 1] ?? (label !== cell.label ? state.order[i - 1] : null) ?? cellId);
  try {
    const out = await api("PATCH", `/cells/${cellId}`, {json: {label, user, version: cell.version}});
    if (recordUndo && label !== cell.label) state.undo.push({cellId, from: cell.label, to: label});
    const verb = label === cell.label ? "confirmed as" : `${cell.display_name} →`;
    say(`Cell #${cell.number}: ${verb} ${cls(label).display_name}`);
    Object.assign(cell, out.cell);
    const previous = {...s};
    Object.assign(s, out.sample, {cells: s.cells, fields: s.fields});
    state.selected = next;
    renderHead(); renderDifferential(previous); renderGallery(); renderFields();
    select(state.selected, true);
  } catch (e) {
    say(e.message, "error");
    if (e.status === 409) await loadSample(s.id);
  } finally { state.busy = false; }
}

async function undo() {
  const last = state.undo.pop();
  if (!last) { say("Nothing to undo."); return; }
  await setLabel(last.cellId, last.from, {recordUndo: false, stay: true});
  renderHead();
}

async function signOff() {
  const s = state.sample;
  const user = await reviewer();
  if (!user) return;
  const pending = s.cells.filter((c) => c.review).length;
  const ok = await ask({title: `Sign off sample ${s.id}?`, ok: "Sign off",
    text: `Signed off by ${user}. ` + (pending ? `${pending} cell(s) are still marked for review. ` : "") + "After sign-off the sample is locked: no more changes."});
  if (!ok) return;
  try {
    await api("POST", `/samples/${s.id}/signoff`, {json: {user, version: s.version}});
    say(`Sample ${s.id} signed off by ${user}.`);
  } catch (e) { say(e.message, "error"); }
  await loadSample(s.id);
}

async function deleteSample() {
  const s = state.sample;
  const ok = await ask({title: `Delete sample ${s.id}?`, ok: "Delete",
    text: "Its fields, cells and results are removed for good (the audit trail keeps a record)." + (s.signed_off_at ? " It is signed off." : "")});
  if (!ok) return;
  const user = $("#reviewer").value.trim() || "unknown";
  try {
    await api("DELETE", `/samples/${s.id}?user=${encodeURIComponent(user)}${s.signed_off_at ? "&force=true" : ""}`);
    say(`Sample ${s.id} deleted.`);
    location.hash = "#/";
  } catch (e) { say(e.message, "error"); }
}

function renderFields() {
  const s = state.sample, box = $("#fields");
  const byField = new Map();
  for (const c of s.cells) { if (!byField.has(c.field_id)) byField.set(c.field_id, []); byField.get(c.field_id).push(c); }
  box.replaceChildren(...s.fields.map((f) => {
    const cells = byField.get(f.id) || [];
    const fig = h("figure", {class: "field"});
    if (f.error) {
      fig.append(h("figcaption", {}, h("strong", {text: f.filename}), `: not analysed — ${f.error}`));
      return fig;
    }
    const frame = h("div", {class: "frame"}, h("img", {src: f.image_url, alt: `field ${f.filename}`, loading: "lazy"}));
    if (f.width && f.height) {
      for (const c of cells) {
        const [x0, y0, x1, y1] = c.box;
        frame.append(h("button", {type: "button", class: `box${c.review ? " for-review" : ""}${c.id === state.selected ? " selected" : ""}`,
          "data-id": c.id, "aria-label": `cell ${c.number}, ${c.display_name}`, onclick: () => select(c.id, true),
          style: {left: `${(100 * x0) / f.width}%`, top: `${(100 * y0) / f.height}%`, width: `${(100 * (x1 - x0)) / f.width}%`,
            height: `${(100 * (y1 - y0)) / f.height}%`, borderColor: cls(c.label).colour}},
          h("span", {class: "boxlabel", style: {background: cls(c.label).colour}, text: `#${c.number} ${c.display_name}${c.review ? " ?" : ""}`})));
      }
    }
    const quality = f.quality.length ? ` — ${f.quality.map((q) => q.replaceAll("_", " ")).join(", ")}` : "";
    fig.append(frame, h("figcaption", {}, h("strong", {text: f.filename}), `: ${f.n_cells ?? "?"} WBC${quality} `,
      f.annotated_url ? h("a", {href: f.annotated_url, target: "_blank", rel: "noopener", text: "as analysed (PNG)"}) : null));
    return fig;
  }));
}

function onKey(e) {
  if (!state.sample || !$("#gallery") || $("#dialog").open) return;
  const t = e.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
  const locked = Boolean(state.sample.signed_off_at) || state.sample.status !== "done";
  const key = e.key;
  if ((e.ctrlKey || e.metaKey) && key.toLowerCase() === "z") { e.preventDefault(); if (!locked) undo(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (key === "ArrowRight") { e.preventDefault(); move(1); return; }
  if (key === "ArrowLeft") { e.preventDefault(); move(-1); return; }
  if (key === "ArrowDown") { e.preventDefault(); moveRow(1); return; }
  if (key === "ArrowUp") { e.preventDefault(); moveRow(-1); return; }
  if (locked || state.selected === null) return;
  if (key === "Enter") {
    const cell = state.sample.cells.find((c) => c.id === state.selected);
    if (cell) { e.preventDefault(); setLabel(cell.id, cell.label); }
    return;
  }
  if (key.toLowerCase() === "u") { e.preventDefault(); undo(); return; }
  const type = state.info.classes.find((c) => c.key && c.key === key.toLowerCase());
  if (type) { e.preventDefault(); setLabel(state.selected, type.name); }
}

// ---------------------------------------------------------------------------------------------- start

function route() {
  clearTimers();
  const m = location.hash.match(/^#\/samples\/(\d+)$/);
  if (m) showSample(Number(m[1])); else showList();
  $("#view").focus({preventScroll: true});
}

async function start() {
  const input = $("#reviewer");
  input.value = localStorage.getItem("wbc-reviewer") || "";
  input.addEventListener("change", () => localStorage.setItem("wbc-reviewer", input.value.trim()));
  try { state.info = await api("GET", "/info"); } catch (e) {
    $("#view").replaceChildren(h("p", {class: "error", text: `The server does not answer: ${e.message}`}));
    return;
  }
  const tb = $("#token-button");
  tb.hidden = !state.info.token_required;
  tb.addEventListener("click", () => askToken(false));
  if (state.info.token_required && !localStorage.getItem("wbc-token")) askToken(false);
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  route();
}

start();
