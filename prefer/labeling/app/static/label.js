"use strict";
// One task: rank K responses (drag-and-drop or keyboard, ties allowed), judge one response good or bad (binary),
// or write a demonstration.
// The list order is the ranking, best first; a card marked "tied" shares the place of the card above it.

const task = {
  id: null, kind: null, order: [], tied: new Set(), focus: 0, texts: {}, dragged: null, pendingKey: null,
  good: null,  // binary tasks: true (thumbs up), false (thumbs down), null (not judged yet)
};

function setGood(value) {
  task.good = value;
  for (const [id, mine] of [["verdict-good", true], ["verdict-bad", false]]) {
    const button = document.getElementById(id);
    button.setAttribute("aria-pressed", String(value === mine));
    button.classList.toggle("primary", value === mine);
  }
}

function ranking() {
  // File form of prefer.data.formats: [best, ..., worst], ties grouped in lists.
  const groups = [];
  task.order.forEach((index, position) => {
    if (position > 0 && task.tied.has(index)) groups[groups.length - 1].push(index);
    else groups.push([index]);
  });
  return groups.map((group) => (group.length === 1 ? group[0] : group));
}

function applyRanking(saved) {
  // Restore order and ties from a saved ranking whose indices match this task's responses.
  const flat = [];
  const tied = new Set();
  for (const entry of saved) {
    const group = Array.isArray(entry) ? entry : [entry];
    group.forEach((index, i) => { flat.push(index); if (i > 0) tied.add(index); });
  }
  const known = new Set(task.order);
  if (flat.length !== task.order.length || !flat.every((i) => known.has(i))) return;
  task.order = flat;
  task.tied = tied;
}

function render() {
  const list = document.getElementById("responses");
  list.replaceChildren();
  let place = 0;
  task.order.forEach((index, position) => {
    const tiedAbove = position > 0 && task.tied.has(index);
    if (!tiedAbove) place = position + 1;
    const item = document.createElement("li");
    item.className = "response" + (tiedAbove ? " tied" : "") + (position === task.focus ? " focused" : "");
    item.tabIndex = position === task.focus ? 0 : -1;
    item.draggable = true;
    item.dataset.index = String(index);
    item.dataset.position = String(position);
    item.setAttribute("aria-label", `response ${index}, place ${place}${tiedAbove ? ", tied with the one above" : ""}`);
    const badge = document.createElement("span");
    badge.className = "place";
    badge.textContent = tiedAbove ? "=" + place : String(place);
    const text = document.createElement("pre");
    text.className = "text";
    text.textContent = task.texts[index];  // text, never HTML
    const tie = document.createElement("button");
    tie.type = "button";
    tie.className = "tie link";
    tie.textContent = tiedAbove ? "untie" : "tie with above";
    tie.hidden = position === 0;
    tie.addEventListener("click", () => { toggleTie(position); });
    item.append(badge, text, tie);
    item.addEventListener("dragstart", (event) => {
      task.dragged = position;
      event.dataTransfer.effectAllowed = "move";
      event.dataTransfer.setData("text/plain", String(index));
      item.classList.add("dragging");
    });
    item.addEventListener("dragend", () => item.classList.remove("dragging"));
    item.addEventListener("dragover", (event) => { event.preventDefault(); event.dataTransfer.dropEffect = "move"; });
    item.addEventListener("drop", (event) => {
      event.preventDefault();
      if (task.dragged === null) return;
      const box = item.getBoundingClientRect();
      const after = event.clientY > box.top + box.height / 2;
      let target = position + (after ? 1 : 0);
      if (task.dragged < target) target -= 1;
      move(task.dragged, target);
      task.dragged = null;
    });
    item.addEventListener("click", () => { task.focus = position; render(); });
    list.appendChild(item);
  });
  const focused = list.children[task.focus];
  if (focused && list.contains(document.activeElement)) focused.focus();
}

function move(from, to) {
  to = Math.max(0, Math.min(task.order.length - 1, to));
  if (from === to) return;
  const [index] = task.order.splice(from, 1);
  task.tied.delete(index);  // a moved response takes a place of its own
  task.order.splice(to, 0, index);
  task.focus = to;
  render();
  document.getElementById("responses").children[to].focus();
}

function toggleTie(position) {
  if (position === 0) return;
  const index = task.order[position];
  if (task.tied.has(index)) task.tied.delete(index); else task.tied.add(index);
  task.focus = position;
  render();
}

function setFocus(position) {
  task.focus = Math.max(0, Math.min(task.order.length - 1, position));
  render();
  document.getElementById("responses").children[task.focus].focus();
}

function quality() {
  const checked = document.querySelector('#quality input[name="quality"]:checked');
  return checked ? parseInt(checked.value, 10) : null;
}

function setQuality(value) {
  // 1..7 checks that point of the scale; anything else clears it
  for (const radio of document.querySelectorAll('#quality input[name="quality"]')) radio.checked = radio.value === String(value);
}

function toggleHelp() {
  // The help sits beside the task (a column of its own), never below the fold.
  const help = document.getElementById("help");
  help.hidden = !help.hidden;
  document.getElementById("task-layout").classList.toggle("with-help", !help.hidden);
}

// "n of N done" over the labeler's whole queue; -> the queue's assignments (or null when it could not be read).
async function showProgress() {
  const result = await prefer.api("GET", "/api/queue");
  if (!result.ok) return null;
  const items = result.data.assignments;
  const done = items.filter((a) => a.status === "submitted").length;
  document.getElementById("progress-text").textContent = `${done} of ${items.length} done`;
  const bar = document.getElementById("progress");
  bar.max = Math.max(1, items.length);
  bar.value = done;
  return items;
}

function nextOpen(items) {
  return items.find((a) => a.assignment_id !== task.id && (a.status === "pending" || a.status === "draft"));
}

function answer() {
  const flags = [...document.querySelectorAll(".flag")].filter((box) => box.checked).map((box) => box.value);
  const body = {quality: quality(), flags};
  if (task.kind === "ranking") body.ranking = ranking();
  else if (task.kind === "binary") body.good = task.good;
  else body.demonstration = document.getElementById("demonstration").value;
  return body;
}

function setStatus(status) {
  document.getElementById("status").textContent = status;
}

async function submit() {
  // One key per answer: a retry after a lost reply replays the stored label instead of adding a second one.
  const body = answer();
  const signature = JSON.stringify(body);
  if (!task.pendingKey || task.pendingKey.signature !== signature) {
    task.pendingKey = {signature, key: crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()};
  }
  const url = `/api/assignments/${task.id}/submit`;
  let result;
  for (let attempt = 0; attempt < 3; attempt++) {
    result = await prefer.api("POST", url, body, {headers: {"Idempotency-Key": task.pendingKey.key}});
    if (result.status !== 0 && result.status < 500) break;
  }
  if (result.ok) {
    task.pendingKey = null;
    setStatus("submitted");
    const items = await showProgress();
    const next = items && document.getElementById("auto-advance").checked ? nextOpen(items) : null;
    const then = next ? "; on to the next task" : items && !nextOpen(items) ? "; no open task left in your queue" : "";
    prefer.say(`submitted (version ${result.data.version})${then}`);
    if (next) setTimeout(() => { window.location.href = "/label/" + next.assignment_id; }, 700);
  } else {
    prefer.say(prefer.detail(result), "error");
  }
}

async function saveDraft() {
  const result = await prefer.api("PUT", `/api/assignments/${task.id}/draft`, answer());
  if (result.ok) { setStatus(result.data.status); prefer.say("draft saved"); }
  else prefer.say(prefer.detail(result), "error");
}

async function skip() {
  const result = await prefer.api("POST", `/api/assignments/${task.id}/skip`);
  if (result.ok) { setStatus("skipped"); prefer.say("skipped"); }
  else prefer.say(prefer.detail(result), "error");
}

async function nextTask() {
  const items = await showProgress();
  if (!items) return;
  const next = nextOpen(items);
  if (next) window.location.href = "/label/" + next.assignment_id;
  else prefer.say("no other open task in your queue");
}

const FLAG_KEYS = {f: "fails_instruction", h: "harmful", p: "personal_data", m: "made_up_facts"};

function onKey(event) {
  const typing = ["TEXTAREA", "INPUT", "SELECT"].includes(event.target.tagName);
  if ((event.ctrlKey || event.metaKey) && event.key === "Enter") { event.preventDefault(); submit(); return; }
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "s") { event.preventDefault(); saveDraft(); return; }
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key === "?") { toggleHelp(); return; }
  if (key === "x") { skip(); return; }
  if (key === "n") { nextTask(); return; }
  if (/^[0-7]$/.test(key)) { setQuality(key); return; }
  if (FLAG_KEYS[key]) {
    const box = document.querySelector(`.flag[value="${FLAG_KEYS[key]}"]`);
    box.checked = !box.checked;
    return;
  }
  if (task.kind === "binary" && (key === "g" || key === "b")) { setGood(key === "g"); return; }
  if (task.kind !== "ranking") return;
  const handled = {
    ArrowUp: () => (event.shiftKey ? move(task.focus, task.focus - 1) : setFocus(task.focus - 1)),
    ArrowDown: () => (event.shiftKey ? move(task.focus, task.focus + 1) : setFocus(task.focus + 1)),
    k: () => setFocus(task.focus - 1),
    j: () => setFocus(task.focus + 1),
    K: () => move(task.focus, task.focus - 1),
    J: () => move(task.focus, task.focus + 1),
    Home: () => move(task.focus, 0),
    End: () => move(task.focus, task.order.length - 1),
    t: () => toggleTie(task.focus),
  }[key];
  if (handled) { event.preventDefault(); handled(); }
}

document.addEventListener("DOMContentLoaded", async () => {
  task.id = parseInt(document.getElementById("task").dataset.assignment, 10);
  const result = await prefer.api("GET", `/api/assignments/${task.id}`);
  if (!result.ok) { prefer.say(prefer.detail(result), "error"); return; }
  const data = result.data;
  task.kind = data.kind;
  document.getElementById("kind").textContent = data.kind;
  setStatus(data.status);
  document.getElementById("prompt").textContent = data.prompt;
  document.getElementById("instructions").textContent = data.instructions || "";
  const saved = data.draft || data.label || {};
  if (data.kind === "ranking") {
    document.getElementById("ranking-section").hidden = false;
    for (const response of data.responses) task.texts[response.index] = response.text;
    task.order = data.responses.map((response) => response.index);
    if (saved.ranking) applyRanking(saved.ranking);
    render();
  } else if (data.kind === "binary") {
    document.getElementById("binary-section").hidden = false;
    document.getElementById("binary-response").textContent = data.responses[0].text;  // text, never HTML
    setGood(typeof saved.good === "boolean" ? saved.good : null);
    document.getElementById("verdict-good").addEventListener("click", () => setGood(true));
    document.getElementById("verdict-bad").addEventListener("click", () => setGood(false));
  } else {
    document.getElementById("demonstration-section").hidden = false;
    document.getElementById("demonstration").value = saved.demonstration || "";
  }
  setQuality(saved.quality);
  for (const box of document.querySelectorAll(".flag")) box.checked = (saved.flags || []).includes(box.value);
  if (data.locked) prefer.say("this project is locked: answers can no longer change", "error");
  document.getElementById("submit").addEventListener("click", submit);
  document.getElementById("save-draft").addEventListener("click", saveDraft);
  document.getElementById("skip").addEventListener("click", skip);
  document.getElementById("help-toggle").addEventListener("click", toggleHelp);
  document.getElementById("quality-clear").addEventListener("click", () => setQuality(null));
  const advance = document.getElementById("auto-advance");
  advance.checked = localStorage.getItem("prefer-auto-advance") !== "0";
  advance.addEventListener("change", () => localStorage.setItem("prefer-auto-advance", advance.checked ? "1" : "0"));
  await showProgress();
  document.addEventListener("keydown", onKey);
  document.body.dataset.ready = "1";  // for the browser test: the task is on the page
});
