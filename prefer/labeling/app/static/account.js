"use strict";
// The labeler's account page: change the password, log out everywhere.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("password-form");
  prefer.onSubmit(form, "/api/password", (result) => {
    form.reset();
    prefer.say(`password changed; ${result.data.other_sessions_ended} other session(s) ended`);
  });
  document.getElementById("logout-everywhere").addEventListener("click", async () => {
    await prefer.api("POST", "/api/logout/everywhere");
    window.location.href = "/login";
  });
});
