// Shared by every page: the API call with the session's CSRF token, status messages, log out.
"use strict";

const prefer = {
  csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  },
  // -> {ok, status, data}; a network failure is {ok: false, status: 0}.
  async api(method, url, body, options = {}) {
    const headers = Object.assign({"X-CSRF-Token": prefer.csrf()}, options.headers || {});
    let payload;
    if (options.raw !== undefined) {
      payload = options.raw;
      headers["Content-Type"] = options.contentType || "application/x-ndjson";
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    try {
      const response = await fetch(url, {method, headers, body: payload, credentials: "same-origin"});
      const text = await response.text();
      let data = null;
      try { data = text ? JSON.parse(text) : null; } catch (_) { data = {detail: text}; }
      return {ok: response.ok, status: response.status, data};
    } catch (error) {
      return {ok: false, status: 0, data: {detail: "network error: " + error.message}};
    }
  },
  // POST a file's bytes with upload progress (fetch reports none): onProgress(sent, total) as they leave the
  // browser; -> {ok, status, data} as api() gives.
  upload(url, file, onProgress, contentType = "application/x-ndjson") {
    return new Promise((resolve) => {
      const request = new XMLHttpRequest();
      request.open("POST", url);
      request.setRequestHeader("X-CSRF-Token", prefer.csrf());
      request.setRequestHeader("Content-Type", contentType);
      request.withCredentials = true;
      request.upload.onprogress = (event) => onProgress(event.loaded, event.lengthComputable ? event.total : file.size);
      request.upload.onload = () => onProgress(file.size, file.size);  // a small body may send no progress event
      request.onload = () => {
        let data = null;
        try { data = request.responseText ? JSON.parse(request.responseText) : null; }
        catch (_) { data = {detail: request.responseText}; }
        resolve({ok: request.status >= 200 && request.status < 300, status: request.status, data});
      };
      request.onerror = () => resolve({ok: false, status: 0, data: {detail: "network error during the upload"}});
      request.send(file);
    });
  },
  say(text, kind = "ok") {
    const box = document.getElementById("message");
    if (!box) return;
    box.textContent = text;  // never innerHTML: messages may quote user data
    box.className = kind;
  },
  detail(result) {
    return (result.data && result.data.detail) ? result.data.detail : "HTTP " + result.status;
  },
  // On submit, POST the form's fields as JSON to `url`: a refusal is said as an error, a success goes to `done`.
  onSubmit(form, url, done) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = await prefer.api("POST", url, Object.fromEntries(new FormData(form).entries()));
      if (!result.ok) { prefer.say(prefer.detail(result), "error"); return; }
      done(result);
    });
  },
};

document.addEventListener("DOMContentLoaded", () => {
  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      const admin = !!document.querySelector('a[href="/admin"]');
      await prefer.api("POST", "/api/logout");
      window.location.href = admin ? "/admin/login" : "/login";
    });
  }
});
