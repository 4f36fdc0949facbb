"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = Object.fromEntries(new FormData(form).entries());
    const result = await prefer.api("POST", form.dataset.api, body);
    if (result.ok) {
      window.location.href = form.dataset.next;
    } else {
      prefer.say(prefer.detail(result), "error");
    }
  });
});
