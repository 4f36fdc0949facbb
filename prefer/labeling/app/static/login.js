"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login-form");
  prefer.onSubmit(form, form.dataset.api, () => { window.location.href = form.dataset.next; });
});
