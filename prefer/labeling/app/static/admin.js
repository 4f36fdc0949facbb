"use strict";
// Admin pages: JSON forms, JSONL uploads, progress and agreement tables.

function formBody(form) {
  const body = {};
  for (const element of form.elements) {
    if (!element.name || element.type === "file") continue;
    let value = element.value;
    const type = element.dataset.type;
    if (type === "int") value = parseInt(value, 10);
    else if (type === "float") value = parseFloat(value);
    else if (type === "bool") value = value === "true";
    body[element.name] = value;
  }
  return body;
}

function table(rows, columns) {
  const element = document.createElement("table");
  element.className = "grid";
  const head = element.createTHead().insertRow();
  for (const column of columns) {
    const th = document.createElement("th");
    th.textContent = column;
    head.appendChild(th);
  }
  const body = element.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const value of row) tr.insertCell().textContent = value === null || value === undefined ? "-" : String(value);
  }
  return element;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "-" : Number(x).toFixed(digits);
}

async function loadStats(projectId) {
  const progress = await prefer.api("GET", `/api/admin/projects/${projectId}/progress`);
  const box = document.getElementById("progress");
  if (progress.ok) {
    const p = progress.data;
    const a = p.assignments;
    const summary = document.createElement("p");
    summary.textContent = `${p.prompts} prompts; tasks: ${p.tasks.ranking} ranking, ${p.tasks.demonstration} ` +
      `demonstration; ${p.tasks_complete} complete; assignments: ${a.submitted} submitted / ${a.assigned}`;
    box.replaceChildren(summary, table(Object.entries(p.labelers).map(([name, c]) =>
      [name, c.assigned, c.submitted, c.draft, c.skipped, c.pending]),
      ["labeler", "assigned", "submitted", "draft", "skipped", "pending"]));
  }
  const agreement = await prefer.api("GET", `/api/admin/projects/${projectId}/agreement`);
  const abox = document.getElementById("agreement");
  if (agreement.ok) {
    const rows = [["all labelers", agreement.data.overall], ...Object.entries(agreement.data.per_labeler)].map(
      ([name, g]) => [name, fmt(g.pairwise_agreement), `${g.pairs_agreed}/${g.pairs_compared}`, g.pairs_tied,
                      fmt(g.kendall_tau_mean), g.kendall_tau_count]);
    abox.replaceChildren(table(rows, ["", "pairwise agreement", "agreed/compared pairs", "tied pairs",
                                      "mean Kendall tau-b", "comparisons"]));
  }
}

// Responses from a checkpoint: a background job; its progress is polled until it ends (or is cancelled).
async function followGeneration(id) {
  const box = document.getElementById("generation-status");
  const cancel = document.getElementById("generation-cancel");
  cancel.hidden = false;
  cancel.onclick = async () => {
    const result = await prefer.api("POST", `/api/admin/generations/${id}/cancel`);
    if (!result.ok) prefer.say(prefer.detail(result), "error");
  };
  for (;;) {
    const result = await prefer.api("GET", `/api/admin/generations/${id}`);
    if (!result.ok) { prefer.say(prefer.detail(result), "error"); cancel.hidden = true; return; }
    const g = result.data;
    const stopping = g.cancel_requested && g.status === "running" ? " (stopping after this batch)" : "";
    box.textContent = `generation ${g.status}: ${g.prompts_done} of ${g.prompts_total} prompts${stopping}`;
    if (g.status !== "queued" && g.status !== "running") {
      cancel.hidden = true;
      if (g.status === "done") prefer.say(JSON.stringify(g.result));
      else prefer.say(`generation ${g.status}` + (g.error ? ": " + g.error : ""), g.status === "failed" ? "error" : "ok");
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function loadLabelers() {
  const box = document.getElementById("labelers");
  const result = await prefer.api("GET", "/api/admin/labelers");
  if (!result.ok) { prefer.say(prefer.detail(result), "error"); return; }
  const rows = result.data.labelers;
  const element = table(rows.map((u) => [u.username, u.active ? "active" : "deactivated", ""]),
                        ["labeler", "state", ""]);
  rows.forEach((u, i) => {
    const cell = element.tBodies[0].rows[i].cells[2];
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.textContent = u.active ? "Deactivate" : "Reactivate";
    toggle.className = "labeler-toggle";
    toggle.addEventListener("click", async () => {
      const r = await prefer.api("PATCH", `/api/admin/labelers/${u.id}`, {active: !u.active});
      prefer.say(r.ok ? JSON.stringify(r.data) : prefer.detail(r), r.ok ? "ok" : "error");
      loadLabelers();
    });
    const end = document.createElement("button");
    end.type = "button";
    end.textContent = "End sessions";
    end.addEventListener("click", async () => {
      const r = await prefer.api("POST", `/api/admin/labelers/${u.id}/logout`);
      prefer.say(r.ok ? JSON.stringify(r.data) : prefer.detail(r), r.ok ? "ok" : "error");
    });
    cell.append(toggle, " ", end);
  });
  box.replaceChildren(rows.length ? element : document.createTextNode("No labeler yet."));
}

document.addEventListener("DOMContentLoaded", () => {
  const kept = sessionStorage.getItem("prefer-message");
  if (kept) { prefer.say(kept); sessionStorage.removeItem("prefer-message"); }
  for (const form of document.querySelectorAll(".api-form")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      prefer.say("working...");
      const result = await prefer.api("POST", form.dataset.api, formBody(form));
      if (!result.ok) { prefer.say(prefer.detail(result), "error"); return; }
      prefer.say(JSON.stringify(result.data));
      if (form.dataset.then === "project") window.location.href = "/admin/projects/" + result.data.id;
      else if (form.dataset.then === "reload") {
        sessionStorage.setItem("prefer-message", JSON.stringify(result.data));  // shown again after the reload
        setTimeout(() => window.location.reload(), 600);
      }
    });
  }
  for (const form of document.querySelectorAll(".upload-form")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const file = form.querySelector('input[type="file"]').files[0];
      if (!file) { prefer.say("choose a file first", "error"); return; }
      const url = form.dataset.api + "?filename=" + encodeURIComponent(file.name);
      const result = await prefer.api("POST", url, undefined, {raw: await file.text()});
      prefer.say(result.ok ? JSON.stringify(result.data) : prefer.detail(result), result.ok ? "ok" : "error");
    });
  }
  const generate = document.getElementById("generate");
  if (generate) {
    generate.addEventListener("submit", async (event) => {
      event.preventDefault();
      prefer.say("starting the generation...");
      const result = await prefer.api("POST", generate.dataset.api, formBody(generate));
      if (!result.ok) { prefer.say(prefer.detail(result), "error"); return; }
      prefer.say("generating in the background...");
      followGeneration(result.data.generation_id);
    });
  }
  const project = document.getElementById("project");
  if (project) {
    loadStats(project.dataset.project);
    prefer.api("GET", `/api/admin/projects/${project.dataset.project}/generations`).then((result) => {
      const running = result.ok && result.data.generations.find((g) => g.status === "running" || g.status === "queued");
      if (running) followGeneration(running.generation_id);  // a job started before this page was opened
    });
  }
  if (document.getElementById("labelers")) loadLabelers();
  const everywhere = document.getElementById("logout-everywhere");
  if (everywhere) {
    everywhere.addEventListener("click", async () => {
      await prefer.api("POST", "/api/logout/everywhere");
      window.location.href = "/admin/login";
    });
  }
});
