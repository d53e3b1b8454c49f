// The console's own script: draws the charts from JSON embedded in the page, and shows the
// problem detail of a failed HTMX request (htmx swaps nothing on 4xx/5xx by default).
"use strict";

function drawCharts() {
  const source = document.getElementById("usage-data");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const line = (label, values, color) => ({ label, data: values, borderColor: color, backgroundColor: color, spanGaps: true, tension: 0.2 });
  const specs = {
    requests: { type: "bar", datasets: [line("requests", data.requests, "#4e79a7"), line("failed", data.failed, "#e15759")] },
    latency: { type: "line", datasets: [line("p50", data.p50, "#59a14f"), line("p95", data.p95, "#f28e2b")] },
    tokens: { type: "bar", datasets: [line("prompt", data.prompt_tokens, "#76b7b2"), line("completion", data.completion_tokens, "#edc948")] },
    guardrails: { type: "bar", datasets: [line("blocked", data.guardrail_blocks, "#e15759"), line("flagged", data.guardrail_flags, "#f28e2b")] },
    feedback: { type: "bar", datasets: [line("feedback", data.feedback, "#b07aa1")] },
  };
  document.querySelectorAll("canvas[data-chart]").forEach((canvas) => {
    const spec = specs[canvas.dataset.chart];
    if (!spec) return;
    new Chart(canvas, {
      type: spec.type,
      data: { labels: data.labels, datasets: spec.datasets },
      options: { animation: false, responsive: true, maintainAspectRatio: false, scales: { y: { beginAtZero: true } } },
    });
  });
}

// A job's curves: every metric name it records is one line; the learning rate gets its own axis.
const PALETTE = ["#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"];

function drawJobMetrics() {
  const canvas = document.querySelector("canvas[data-job-metrics]");
  if (!canvas || typeof Chart === "undefined") return;
  const url = canvas.dataset.jobMetrics;
  const pollMs = 1000 * Number(canvas.dataset.poll || 2);
  const empty = document.getElementById("job-metrics-empty");
  const series = new Map();
  let lastStep = -1;
  const chart = new Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
      scales: {
        x: { type: "linear", title: { display: true, text: "step" } },
        y: { position: "left" },
        lr: { position: "right", display: "auto", grid: { drawOnChartArea: false }, title: { display: true, text: "learning rate" } },
      },
    },
  });
  canvas.chart = chart;
  const add = (rows) => {
    for (const row of rows) {
      for (const [name, value] of Object.entries(row.values)) {
        if (!series.has(name)) {
          const color = PALETTE[series.size % PALETTE.length];
          const dataset = { label: name, data: [], borderColor: color, backgroundColor: color, pointRadius: 0,
            borderWidth: 1.5, yAxisID: /^(lr|learning_rate)$/.test(name) ? "lr" : "y" };
          series.set(name, dataset);
          chart.data.datasets.push(dataset);
        }
        series.get(name).data.push({ x: row.step, y: value });
      }
      lastStep = Math.max(lastStep, row.step);
    }
    for (const dataset of series.values()) dataset.pointRadius = dataset.data.length < 3 ? 4 : 0;
    if (empty) empty.hidden = series.size > 0;
    chart.update();
  };
  const reset = () => {
    series.clear();
    chart.data.datasets = [];
    lastStep = -1;
  };
  const poll = async () => {
    const from = lastStep;
    let answer;
    try {
      const response = await fetch(`${url}?after_step=${from}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return; // signed out or gone: the page's own poll shows why
      answer = await response.json();
    } catch (_) {
      return;
    }
    if (answer.active) {
      add(answer.metrics);
      setTimeout(poll, pollMs);
    } else if (from === -1) {
      add(answer.metrics); // everything, in one answer
    } else {
      reset(); // finished: read it all once more (a final evaluation may share the last step)
      setTimeout(poll, 0);
    }
  };
  poll();
}

// Agents: run one and show its steps as the server-sent events arrive. Every field is set with
// textContent: observations are untrusted text and never become markup.
function parseEvents(buffer, onEvent) {
  let boundary;
  while ((boundary = buffer.indexOf("\n\n")) !== -1) {
    const block = buffer.slice(0, boundary);
    buffer = buffer.slice(boundary + 2);
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    }
    if (data.length) onEvent(event, JSON.parse(data.join("\n")));
  }
  return buffer;
}

function showStep(step) {
  const list = document.getElementById("agent-steps");
  const item = document.getElementById("agent-step-template").content.firstElementChild.cloneNode(true);
  item.dataset.number = step.number;
  const fill = (selector, text) => {
    const node = item.querySelector(selector);
    if (text) node.textContent = text;
    else node.closest("div").remove();
  };
  fill(".thought span", step.thought);
  if (step.action) {
    item.querySelector(".tool").textContent = step.action;
    item.querySelector(".arguments").textContent = JSON.stringify(step.arguments || {});
  } else item.querySelector(".action").remove();
  if (step.observation) {
    item.querySelector(".observation pre").textContent = step.observation;
    const score = step.injection_score == null ? "" : `, injection score ${step.injection_score.toFixed(2)}`;
    item.querySelector(".timing").textContent = `model ${Math.round(step.model_ms)} ms, tool ${Math.round(step.tool_ms)} ms${score}`;
  } else item.querySelector(".observation").remove();
  if (step.is_error) item.classList.add("error-step");
  list.appendChild(item);
}

function addPastRun(run) {
  const body = document.querySelector("#agent-runs tbody");
  if (!body) return;
  const empty = body.querySelector("td[colspan]");
  if (empty) empty.closest("tr").remove();
  const row = document.createElement("tr");
  const cell = (text) => { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); return td; };
  const when = cell("");
  const link = document.createElement("a");
  link.href = `/console/agents/runs/${encodeURIComponent(run.id)}`;
  link.textContent = String(run.created_at).replace("T", " ").slice(0, 19);
  when.appendChild(link);
  cell(run.agent);
  cell(run.question.length > 120 ? `${run.question.slice(0, 117)}...` : run.question).className = "text";
  const badge = document.createElement("span");
  badge.className = `badge ${run.status === "ok" ? "succeeded" : "failed"}`;
  badge.textContent = run.status;
  cell("").appendChild(badge);
  cell(String(run.steps));
  cell(run.duration_ms ? `${(run.duration_ms / 1000).toFixed(1)} s` : "");
  body.prepend(row);
}

function setUpAgentForm() {
  const form = document.getElementById("agent-form");
  if (!form) return;
  const status = document.getElementById("agent-status");
  const stop = document.getElementById("agent-stop");
  let controller = null;
  stop.addEventListener("click", () => controller && controller.abort());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = new FormData(form);
    const agent = fields.get("agent");
    fields.delete("agent");
    document.getElementById("agent-steps").replaceChildren();
    const answer = document.getElementById("agent-answer");
    answer.hidden = true;
    document.getElementById("agent-trace").hidden = false;
    document.getElementById("agent-run-id").textContent = "";
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    stop.disabled = false;
    status.textContent = "running…";
    controller = new AbortController();
    try {
      const response = await fetch(`/console/agents/${encodeURIComponent(agent)}/runs`, {
        method: "POST", credentials: "same-origin", signal: controller.signal,
        headers: { "X-CSRF-Token": form.dataset.csrf, "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(fields),
      });
      if (!response.ok) {
        let message = `The run could not start (${response.status}).`;
        try { message = (await response.json()).detail || message; } catch (_) { /* not a problem document */ }
        showFlash(message);
        status.textContent = "";
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = parseEvents(buffer + value, (kind, data) => {
          if (kind === "start") document.getElementById("agent-run-id").textContent = data.id;
          else if (kind === "step") showStep(data);
          else if (kind === "run") {
            status.textContent = `${data.status} after ${data.steps} steps`;
            document.getElementById("agent-trace").dataset.status = data.status;
            if (data.answer != null) {
              answer.querySelector("pre").textContent = data.answer;
              answer.hidden = false;
            }
            addPastRun(data);
            if (data.error && data.status === "error") showFlash(data.error);
            else if (data.error) status.textContent += `: ${data.error}`;
          } else if (kind === "error") showFlash(data.message);
        });
      }
    } catch (error) {
      status.textContent = error.name === "AbortError" ? "stopped" : "";
      if (error.name !== "AbortError") showFlash("The server could not be reached.");
    } finally {
      submit.disabled = false;
      stop.disabled = true;
      controller = null;
    }
  });
}

// Policy evaluations on the models page: serving against candidate, one small bar chart a metric.
function drawEvaluationCharts() {
  const source = document.getElementById("evaluation-data");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const colors = { reward: ["#4e79a7", "#59a14f"], toxicity: ["#4e79a7", "#e15759"] };
  document.querySelectorAll("canvas[data-evaluation]").forEach((canvas) => {
    const report = data[canvas.dataset.evaluation];
    const metric = canvas.dataset.metric;
    if (!report || !report[metric] || Chart.getChart(canvas)) return;
    new Chart(canvas, {
      type: "bar",
      data: { labels: report.labels, datasets: [{ label: metric, data: report[metric], backgroundColor: colors[metric] }] },
      options: { animation: false, responsive: true, maintainAspectRatio: false, plugins: { legend: { display: false } } },
    });
  });
}

function showFlash(message) {
  const flash = document.getElementById("flash");
  if (!flash) return;
  flash.textContent = message; // text, never HTML
  flash.hidden = false;
}

// Agreement per labeler on a labeling task's page (Kendall's tau and alpha without the labeler).
function drawAgreement() {
  const source = document.getElementById("agreement-data");
  const canvas = document.querySelector('canvas[data-chart="agreement"]');
  if (!source || !canvas || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [
        { label: "mean Kendall's tau", data: data.mean_tau, backgroundColor: "#4e79a7" },
        { label: "alpha without this labeler", data: data.alpha_without, backgroundColor: "#f28e2b" },
      ],
    },
    options: { animation: false, responsive: true, maintainAspectRatio: false, scales: { y: { min: -1, max: 1 } } },
  });
}

// Keyboard ranking on the labeling queue: a current candidate; 1-9 ranks it and moves on,
// f flags it, arrows move, Enter submits. Typing in a text field keeps its normal keys.
let currentCandidate = 0;

function labelCandidates() {
  return Array.from(document.querySelectorAll("#label-form article.candidate"));
}

function markCurrent(index) {
  const cards = labelCandidates();
  if (!cards.length) return;
  currentCandidate = (index + cards.length) % cards.length;
  cards.forEach((card, i) => card.classList.toggle("current", i === currentCandidate));
}

document.addEventListener("keydown", (event) => {
  const form = document.getElementById("label-form");
  if (!form || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target && target.tagName === "INPUT" && target.type === "text") return;
  const cards = labelCandidates();
  const card = cards[currentCandidate];
  if (!card) return;
  if (/^[1-9]$/.test(event.key)) {
    const rank = Number(event.key);
    if (rank > cards.length) return;
    event.preventDefault();
    card.querySelector('input[type="number"]').value = String(rank);
    markCurrent(currentCandidate + 1);
  } else if (event.key === "f") {
    event.preventDefault();
    const box = card.querySelector('input[type="checkbox"]');
    box.checked = !box.checked;
  } else if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
    event.preventDefault();
    markCurrent(currentCandidate + (event.key === "ArrowRight" ? 1 : -1));
  } else if (event.key === "Enter") {
    event.preventDefault();
    form.requestSubmit();
  }
});
document.addEventListener("focusin", (event) => {
  const card = event.target.closest && event.target.closest("#label-form article.candidate");
  if (card) markCurrent(labelCandidates().indexOf(card));
});
document.addEventListener("htmx:afterSwap", () => markCurrent(0));

document.addEventListener("DOMContentLoaded", drawCharts);
document.addEventListener("DOMContentLoaded", drawJobMetrics);
document.addEventListener("DOMContentLoaded", setUpAgentForm);
document.addEventListener("DOMContentLoaded", drawAgreement);
document.addEventListener("DOMContentLoaded", () => markCurrent(0));
document.addEventListener("DOMContentLoaded", drawEvaluationCharts);
document.addEventListener("htmx:afterSettle", drawEvaluationCharts);
document.addEventListener("htmx:beforeRequest", () => {
  const flash = document.getElementById("flash");
  if (flash) flash.hidden = true;
});
document.addEventListener("htmx:responseError", (event) => {
  const xhr = event.detail.xhr;
  let message = `The request failed (${xhr.status}).`;
  try {
    const body = JSON.parse(xhr.responseText);
    if (body.detail) message = body.detail;
  } catch (_) { /* not a problem document */ }
  showFlash(message);
});
document.addEventListener("htmx:sendError", () => showFlash("The server could not be reached."));

// Documents page: uploads go by XMLHttpRequest, whose upload events drive the progress bar (fetch
// reports no upload progress). The answer is the server-rendered, escaped documents table.
function csrfToken() {
  try {
    return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";
  } catch (_) {
    return "";
  }
}

function setupUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = form.querySelector("input[type=file]");
  const bar = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const button = form.querySelector("button[type=submit]");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.files.length) {
      showFlash("Choose one or more files first.");
      return;
    }
    const data = new FormData();
    for (const file of input.files) data.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("action"));
    xhr.setRequestHeader("X-CSRF-Token", csrfToken());
    xhr.setRequestHeader("HX-Request", "true");
    bar.hidden = false;
    bar.value = 0;
    button.disabled = true;
    status.textContent = "uploading…";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = Math.round((100 * e.loaded) / e.total);
    });
    xhr.upload.addEventListener("load", () => {
      bar.value = 100;
      status.textContent = "uploaded; indexing…";
    });
    xhr.addEventListener("load", () => {
      button.disabled = false;
      if (xhr.status >= 200 && xhr.status < 300) {
        const target = document.getElementById("documents");
        target.innerHTML = xhr.responseText; // rendered by the server with escaping
        if (typeof htmx !== "undefined") htmx.process(target);
        status.textContent = "done";
        form.reset();
        return;
      }
      status.textContent = "failed";
      let message = `The upload failed (${xhr.status}).`;
      try {
        const body = JSON.parse(xhr.responseText);
        if (body.detail) message = body.detail;
      } catch (_) { /* not a problem document */ }
      showFlash(message);
    });
    xhr.addEventListener("error", () => {
      button.disabled = false;
      status.textContent = "failed";
      showFlash("The server could not be reached.");
    });
    document.getElementById("flash").hidden = true;
    xhr.send(data);
  });
}

document.addEventListener("DOMContentLoaded", setupUpload);
