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
    const [name, key] = element.name.split(".", 2);  // "kind_instructions.ranking" -> body.kind_instructions.ranking
    if (key !== undefined) (body[name] = body[name] || {})[key] = value;
    else body[name] = value;
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
    const binary = agreement.data.binary;  // once the project has binary answers: same-verdict share per pair
    if (binary) {
      const binaryRows = [["all labelers", binary.overall], ...Object.entries(binary.per_labeler)].map(
        ([name, g]) => [name, fmt(g.pairwise_agreement), `${g.agreed}/${g.comparisons}`]);
      abox.append(el("h3", "Binary (good / bad)"),
                  table(binaryRows, ["", "pairwise agreement", "same verdict/labeler pairs"]));
    }
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

// ----- the lead's pages of a project: tabs, labelers and assignment, browsing, review -----

function el(tag, text, className) {
  const element = document.createElement(tag);
  if (text !== undefined && text !== null) element.textContent = String(text);  // text, never HTML
  if (className) element.className = className;
  return element;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "never";
}

// [2, [0, 3], 1] <-> "2 > 0 = 3 > 1" (best first; "=" ties)
function rankingText(ranking) {
  return ranking ? ranking.map((g) => (Array.isArray(g) ? g.join(" = ") : String(g))).join(" > ") : "-";
}

function parseRankingText(text) {
  return text.split(">").map((group) => {
    const tied = group.split("=").map((s) => parseInt(s.trim(), 10));
    return tied.length === 1 ? tied[0] : tied;
  });
}

function parseTaskIds(text) {
  // "1-5, 9" -> [1, 2, 3, 4, 5, 9]
  const ids = [];
  for (const part of text.split(/[\s,]+/).filter(Boolean)) {
    const range = part.match(/^(\d+)-(\d+)$/);
    if (range) for (let i = +range[1]; i <= +range[2] && ids.length <= 5000; i++) ids.push(i);
    else ids.push(parseInt(part, 10));
  }
  return ids;
}

function showTab() {
  const name = (window.location.hash || "#setup").slice(1);
  const panels = document.querySelectorAll(".tab-panel");
  const known = [...panels].some((p) => p.dataset.tab === name) ? name : "setup";
  for (const panel of panels) panel.hidden = panel.dataset.tab !== known;
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("current", tab.id === "tab-" + known);
  const pid = document.getElementById("project").dataset.project;
  if (known === "labelers") loadProjectLabelers(pid);
  else if (known === "browse") loadBrowse(pid, 1);
  else if (known === "review") loadReview(pid, 1);
}

function pager(name, data, load) {
  const box = document.querySelector(`.pager[data-for="${name}"]`);
  const previous = el("button", "previous");
  previous.type = "button";
  previous.disabled = data.page <= 1;
  previous.addEventListener("click", () => load(data.page - 1));
  const next = el("button", "next");
  next.type = "button";
  next.disabled = data.page >= data.pages;
  next.addEventListener("click", () => load(data.page + 1));
  box.replaceChildren(previous, el("span", ` page ${data.page} of ${data.pages} (${data.total}) `), next);
}

async function loadProjectLabelers(pid) {
  const result = await prefer.api("GET", `/api/admin/projects/${pid}/labelers`);
  if (!result.ok) { prefer.say(prefer.detail(result), "error"); return; }
  const rows = result.data.labelers;
  const element = table(rows.map((u) => ["", u.username, u.active ? "active" : "deactivated",
                                         `${u.done} / ${u.assigned}`, u.draft, u.skipped, when(u.last_activity)]),
                        ["", "labeler", "state", "done / assigned", "drafts", "skipped", "last activity"]);
  rows.forEach((u, i) => {
    const row = element.tBodies[0].rows[i];
    row.dataset.labeler = u.username;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "choose-labeler";
    box.value = u.username;
    box.disabled = !u.active;
    box.setAttribute("aria-label", "choose " + u.username);
    row.cells[0].replaceChildren(box);
    if (!u.active) row.classList.add("inactive");
  });
  document.getElementById("project-labelers").replaceChildren(rows.length ? element : el("p", "No labeler yet."));
}

async function assignChosen(event) {
  event.preventDefault();
  const pid = document.getElementById("project").dataset.project;
  const labelers = [...document.querySelectorAll(".choose-labeler:checked")].map((box) => box.value);
  const taskIds = parseTaskIds(event.target.elements.task_ids.value);
  const result = await prefer.api("POST", `/api/admin/projects/${pid}/assignments`, {labelers, task_ids: taskIds});
  prefer.say(result.ok ? JSON.stringify(result.data) : prefer.detail(result), result.ok ? "ok" : "error");
  if (result.ok) loadProjectLabelers(pid);
}

function responsesTable(responses) {
  return table(responses.map((r) => [r.index, r.text]), ["#", "response"]);
}

function answersTable(answers, withAccept) {
  const columns = ["labeler", "status", "ranking (best first)", "demonstration", "verdict", "quality", "flags",
                   "submitted"];
  const element = table(answers.map((a) => {
    const l = a.label || {};
    return [a.labeler, a.status, rankingText(l.ranking), l.demonstration, verdictText(l.good), l.quality,
            (l.flags || []).join(", "), a.label ? when(l.submitted_at) : "-"];
  }), withAccept ? [...columns, ""] : columns);
  for (const cell of element.querySelectorAll("tbody td:nth-child(4)")) cell.classList.add("text");
  answers.forEach((a, i) => {
    const row = element.tBodies[0].rows[i];
    row.dataset.labeler = a.labeler;
    if (withAccept) {
      const cell = row.insertCell();
      if (a.label && a.status === "submitted") cell.appendChild(withAccept(a));
    }
  });
  return element;
}

function verdictText(good) {
  return good === true ? "good" : good === false ? "bad" : "-";
}

function decisionText(adjudication, answers) {
  if (!adjudication) return "undecided";
  const accepted = answers.find((a) => a.label && a.label.label_id === adjudication.label_id);
  const what = adjudication.label_id !== null
    ? `accepted ${accepted ? accepted.labeler : "label " + adjudication.label_id}'s answer`
    : adjudication.ranking ? "final ranking " + rankingText(adjudication.ranking)
    : adjudication.good !== null && adjudication.good !== undefined ? "final verdict " + verdictText(adjudication.good)
    : "final demonstration written";
  return `decided: ${what}` + (adjudication.note ? ` (${adjudication.note})` : "");
}

async function loadBrowse(pid, page) {
  const result = await prefer.api("GET", `/api/admin/projects/${pid}/prompts?page=${page}&per_page=10`);
  if (!result.ok) { prefer.say(prefer.detail(result), "error"); return; }
  pager("browse", result.data, (p) => loadBrowse(pid, p));
  const cards = result.data.prompts.map((p) => {
    const card = el("article", undefined, "card prompt-card");
    card.append(el("h2", `Prompt ${p.prompt_id}`), el("pre", p.text, "text"));
    if (p.responses.length) card.append(responsesTable(p.responses));
    for (const t of p.tasks) {
      card.append(el("h3", `Task ${t.task_id} · ${t.kind} · ${decisionText(t.adjudication, t.answers)}`));
      card.append(t.answers.length ? answersTable(t.answers) : el("p", "not assigned", "hint"));
    }
    return card;
  });
  document.getElementById("browse").replaceChildren(...(cards.length ? cards : [el("p", "No prompt yet.", "hint")]));
}

async function decide(task, body) {
  const result = await prefer.api("PUT", `/api/admin/tasks/${task}/adjudication`, body);
  prefer.say(result.ok ? "saved: " + JSON.stringify(result.data) : prefer.detail(result), result.ok ? "ok" : "error");
  return result.ok;
}

function reviewCard(pid, t, reload) {
  const card = el("article", undefined, "card review-card");
  card.dataset.task = String(t.task_id);
  const agreement = t.pairwise_agreement === null ? "" : ` · agreement ${fmt(t.pairwise_agreement, 2)}`;
  card.append(el("h2", `Task ${t.task_id} · ${t.kind}${agreement}`), el("pre", t.prompt, "text"));
  // a binary task's labelers judged one response: show that one
  const shown = t.kind === "binary" ? t.responses.filter((r) => r.index === t.response_index) : t.responses;
  if (shown.length) card.append(responsesTable(shown));
  const note = el("input");
  note.placeholder = "note (optional)";
  note.className = "note";
  card.append(answersTable(t.answers, (a) => {
    const accept = el("button", "Accept", "accept");
    accept.type = "button";
    accept.addEventListener("click", async () => {
      if (await decide(t.task_id, {label_id: a.label.label_id, note: note.value})) reload();
    });
    return accept;
  }));
  const final = el("form", undefined, "final-answer");
  const input = el(t.kind === "ranking" ? "input" : t.kind === "binary" ? "select" : "textarea");
  input.name = "final";
  input.required = true;
  if (t.kind === "ranking") input.placeholder = "final ranking, best first, e.g. 2 > 0 = 1";
  if (t.kind === "binary") {
    for (const [value, text] of [["", "final verdict…"], ["true", "good"], ["false", "bad"]]) {
      const option = el("option", text);
      option.value = value;
      input.append(option);
    }
  }
  const saved = {ranking: "Save final ranking", binary: "Save final verdict"}[t.kind] || "Save final demonstration";
  const save = el("button", saved);
  save.type = "submit";
  final.append(input, " ", note, " ", save);
  final.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = t.kind === "ranking" ? {ranking: parseRankingText(input.value)}
      : t.kind === "binary" ? {good: input.value === "true"} : {demonstration: input.value};
    if (await decide(t.task_id, {...body, note: note.value})) reload();
  });
  const decision = el("p", decisionText(t.adjudication, t.answers), t.adjudication ? "decision decided" : "decision");
  if (t.adjudication) {
    const withdraw = el("button", "Withdraw", "link");
    withdraw.type = "button";
    withdraw.addEventListener("click", async () => {
      const result = await prefer.api("DELETE", `/api/admin/tasks/${t.task_id}/adjudication`);
      prefer.say(result.ok ? "withdrawn" : prefer.detail(result), result.ok ? "ok" : "error");
      reload();
    });
    decision.append(" ", withdraw);
  }
  card.append(final, decision);
  return card;
}

async function loadReview(pid, page) {
  const status = document.getElementById("review-status").value;
  const url = `/api/admin/projects/${pid}/disagreements?page=${page}&per_page=10&status=${status}`;
  const result = await prefer.api("GET", url);
  if (!result.ok) { prefer.say(prefer.detail(result), "error"); return; }
  pager("review", result.data, (p) => loadReview(pid, p));
  const cards = result.data.tasks.map((t) => reviewCard(pid, t, () => loadReview(pid, page)));
  document.getElementById("review").replaceChildren(
    ...(cards.length ? cards : [el("p", "No disagreement to review.", "hint")]));
  document.getElementById("review").dataset.loaded = "1";  // for the browser test
}

function initProjectPages() {
  const project = document.getElementById("project");
  if (!project || !document.querySelector(".tab-panel")) return;
  window.addEventListener("hashchange", showTab);
  document.getElementById("assign-form").addEventListener("submit", assignChosen);
  document.getElementById("review-status").addEventListener("change", () => loadReview(project.dataset.project, 1));
  const instructions = document.getElementById("instructions-form");
  instructions.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = await prefer.api("PATCH", instructions.dataset.api, formBody(instructions));
    prefer.say(result.ok ? "instructions saved" : prefer.detail(result), result.ok ? "ok" : "error");
  });
  showTab();
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
      const bar = form.querySelector("progress"), status = form.querySelector(".upload-status");
      const kib = (bytes) => (bytes / 1024).toFixed(1) + " KiB";
      bar.hidden = false;
      prefer.say(`uploading ${file.name}...`);  // the previous action's message is not this upload's result
      const result = await prefer.upload(url, file, (sent, total) => {
        bar.max = total || 1;
        bar.value = sent;
        status.textContent = `sent ${kib(sent)} of ${kib(total)}` + (sent >= total ? "; the server is reading it" : "");
      });
      status.textContent = result.ok ? `uploaded ${kib(file.size)}` : "upload refused";
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
  initProjectPages();
  const everywhere = document.getElementById("logout-everywhere");
  if (everywhere) {
    everywhere.addEventListener("click", async () => {
      await prefer.api("POST", "/api/logout/everywhere");
      window.location.href = "/admin/login";
    });
  }
});
