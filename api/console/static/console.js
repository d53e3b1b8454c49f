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

document.addEventListener("DOMContentLoaded", drawCharts);
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
