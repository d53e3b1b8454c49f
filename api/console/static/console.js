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
document.addEventListener("DOMContentLoaded", drawAgreement);
document.addEventListener("DOMContentLoaded", () => markCurrent(0));
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
