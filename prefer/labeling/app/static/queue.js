"use strict";
document.addEventListener("DOMContentLoaded", async () => {
  const result = await prefer.api("GET", "/api/queue");
  if (!result.ok) { prefer.say(prefer.detail(result), "error"); return; }
  const body = document.querySelector("#queue tbody");
  for (const item of result.data.assignments) {
    const row = document.createElement("tr");
    const link = document.createElement("a");
    link.href = "/label/" + item.assignment_id;
    link.textContent = String(item.assignment_id);
    link.className = "task-link";
    const cells = [link, item.kind, item.status, item.prompt];
    for (const value of cells) {
      const cell = document.createElement("td");
      if (value instanceof Node) cell.appendChild(value); else cell.textContent = value;
      row.appendChild(cell);
    }
    row.dataset.status = item.status;
    body.appendChild(row);
  }
  if (!result.data.assignments.length) prefer.say("No task assigned to you yet.");
});
