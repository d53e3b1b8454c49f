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

document.addEventListener("DOMContentLoaded", drawCharts);
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
