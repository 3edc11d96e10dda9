// The llmclf web page: calls GET /v1/model once, POST /v1/classify for each submission. No build step.
"use strict";

const NAMED_COLORS = { spam: "#b3261e", ham: "#1e7f43" };
const PALETTE = ["#2857c5", "#b3261e", "#1e7f43", "#8a4fbf", "#c46a00", "#00838f", "#6d4c41", "#5b6475"];
let labels = [];
let limits = { max_texts: 64, max_chars: 10000 };
let pairs = false;  // a pair classifier: every request carries texts and text_pairs

const $ = (id) => document.getElementById(id);

function labelColor(label) {
  const key = String(label).toLowerCase();
  if (key in NAMED_COLORS) return NAMED_COLORS[key];
  const i = labels.indexOf(label);
  return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
}

function pct(p) {
  return (100 * p).toFixed(1) + "%";
}

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v);
  }
  for (const c of [].concat(children)) node.append(c);
  return node;
}

function showError(message) {
  const box = $("error");
  if (!message) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent = message;
  box.hidden = false;
}

async function api(path, body) {
  let response;
  try {
    response = await fetch(path, body === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new Error("Cannot reach the server (" + e.message + ")");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const err = data && data.error ? data.error : { code: "http_" + response.status, message: response.statusText };
    throw new Error(`Error ${response.status} (${err.code}): ${err.message}`);
  }
  return data;
}

async function loadModel() {
  try {
    const info = await api("/v1/model");
    labels = info.labels || [];
    limits = info.limits || limits;
    pairs = info.text_pairs === true;
    $("pair-field").hidden = !pairs;
    if (pairs) $("batch-label").textContent = "Pairs, one per line: first text, a tab, second text (blank lines are skipped)";
    const parts = [`Model ${info.model}`, `labels: ${labels.join(", ")}`];
    const test = info.metrics && info.metrics.test;
    if (test && typeof test.accuracy === "number") parts.push(`test accuracy ${pct(test.accuracy)}`);
    if (test && typeof test.f1 === "number") parts.push(`F1 ${test.f1.toFixed(3)}`);
    const d = info.decision;
    if (d && typeof d.threshold === "number") {
      parts.push(`${d.positive_label} when its probability is at least ${d.threshold.toFixed(3)} (${d.target})`);
    }
    $("model-info").textContent = parts.join(" · ");
  } catch (e) {
    $("model-info").textContent = "Model information unavailable.";
    showError(e.message);
  }
}

function renderResult(result) {
  const box = $("result");
  box.replaceChildren();
  if (Array.isArray(result.labels)) {  // a multi-label classifier: the set its thresholds give, maybe empty
    const badges = result.labels.map((label) => {
      const b = el("span", { class: "label-badge", text: label });
      b.style.setProperty("--label-color", labelColor(label));
      return b;
    });
    const shown = badges.length ? badges : [el("span", { text: "none of the labels" })];
    box.append(el("p", { class: "verdict", id: "predicted-label" }, ["Labels: ", ...shown]));
  } else {
    const badge = el("span", { class: "label-badge", id: "predicted-label", text: result.label });
    badge.style.setProperty("--label-color", labelColor(result.label));
    box.append(el("p", { class: "verdict" }, ["Predicted: ", badge, ` with probability ${pct(result.probability)}`]));
  }

  const bars = el("div", { class: "bars", role: "list", "aria-label": "Probability of each class" });
  const entries = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [label, p] of entries) {
    const fill = el("div", { class: "bar-fill", style: { width: pct(p) } });
    fill.style.setProperty("--label-color", labelColor(label));
    const row = [
      el("span", { class: "bar-label", text: label }),
      el("div", { class: "bar-track", "aria-hidden": "true" }, fill),
      el("span", { class: "bar-value", text: pct(p) }),
    ];
    const item = el("div", { role: "listitem", class: "bar-row", "data-label": label, "aria-label": `${label}: ${pct(p)}` }, row);
    bars.append(item);
  }
  box.append(bars);
}

async function classifySingle(event) {
  if (event) event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) {
    showError("Type a message first.");
    $("text").focus();
    return;
  }
  if (text.length > limits.max_chars) {
    showError(`The message has ${text.length} characters; the server accepts at most ${limits.max_chars}.`);
    return;
  }
  const button = $("classify");
  button.disabled = true;
  $("single-status").textContent = "Classifying…";
  try {
    const data = await api("/v1/classify", pairs ? { texts: [text], text_pairs: [$("text-pair").value] } : { texts: [text] });
    showError(null);
    renderResult(data.results[0]);
    $("single-status").textContent = "";
  } catch (e) {
    showError(e.message);
    $("single-status").textContent = "Failed.";
  } finally {
    button.disabled = false;
  }
}

function requestBody(lines) {
  // A pair classifier's line is "first<TAB>second"; a line without a tab is a pair with an empty second text.
  if (!pairs) return { texts: lines };
  const split = lines.map((line) => { const i = line.indexOf("\t"); return i < 0 ? [line, ""] : [line.slice(0, i), line.slice(i + 1)]; });
  return { texts: split.map((p) => p[0]), text_pairs: split.map((p) => p[1]) };
}

async function classifyBatch(event) {
  if (event) event.preventDefault();
  const lines = $("batch").value.split(/\r?\n/).filter((s) => s.trim() !== "");
  if (lines.length === 0) {
    showError("Enter at least one message, one per line.");
    $("batch").focus();
    return;
  }
  const button = $("classify-batch");
  button.disabled = true;
  $("batch-status").textContent = `Classifying ${lines.length} message${lines.length === 1 ? "" : "s"}…`;
  try {
    const results = [];
    for (let i = 0; i < lines.length; i += limits.max_texts) {  // the server takes max_texts per request
      const data = await api("/v1/classify", requestBody(lines.slice(i, i + limits.max_texts)));
      results.push(...data.results);
    }
    showError(null);
    renderTable(lines, results);
    $("batch-status").textContent = `${results.length} classified.`;
  } catch (e) {
    showError(e.message);
    $("batch-status").textContent = "Failed.";
  } finally {
    button.disabled = false;
  }
}

function renderTable(lines, results) {
  const table = $("batch-table");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  results.forEach((r, i) => {
    const color = labelColor(r.label);
    const bar = el("span", { class: "mini-bar", "aria-hidden": "true" }, el("span", { style: { width: pct(r.probability) } }));
    bar.style.setProperty("--label-color", color);
    const shown = Array.isArray(r.labels) ? (r.labels.join(", ") || "none") : r.label;
    const badge = el("span", { class: "label-badge", text: shown });
    badge.style.setProperty("--label-color", color);
    body.append(el("tr", {}, [
      el("td", { class: "num", text: String(i + 1) }),
      el("td", { class: "msg", text: lines[i] }),
      el("td", {}, badge),
      el("td", { class: "num" }, [bar, pct(r.probability)]),
    ]));
  });
  table.hidden = false;
}

function init() {
  $("single-form").addEventListener("submit", classifySingle);
  $("batch-form").addEventListener("submit", classifyBatch);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) classifySingle(e);
  });
  const chips = Array.from(document.querySelectorAll(".chip"));
  for (const chip of chips) {
    chip.title = chip.textContent;
    chip.addEventListener("click", () => {
      $("text").value = chip.textContent;
      classifySingle();
    });
  }
  $("fill-batch").addEventListener("click", () => {
    $("batch").value = chips.map((c) => c.textContent).join("\n");
    classifyBatch();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", init);
