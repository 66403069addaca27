// The dashboard's shell: log in with an API key (kept in sessionStorage, sent as a Bearer token), route by the
// URL's hash, and show the API's problem details when a call fails.

import { api, ApiError, credentials } from "./api.js";
import { h, replace } from "./dom.js";
import { jobView } from "./job.js";
import { jobsView, pipelinesView, pipelineView } from "./lists.js";

const view = document.getElementById("view");
const banner = document.getElementById("error");
const nav = document.getElementById("nav");
let leave = () => {};

function report(error) {
  if (!error) {
    banner.hidden = true;
    return;
  }
  if (error instanceof ApiError && error.status === 401) {
    credentials.forget();
    route(error.message);
    return;
  }
  const problem = error instanceof ApiError ? error.problem : null;
  banner.textContent = problem && problem.title ? `${problem.title}: ${error.message}` : error.message;
  banner.hidden = false;
}

function loginView(root, message) {
  const key = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true,
                           placeholder: "tq_…", size: 48 });
  const note = h("p", { className: "error", role: "alert", hidden: !message }, message || "");
  const form = h("form", { id: "login", className: "login", onsubmit: async (e) => {
    e.preventDefault();
    credentials.save(key.value.trim());
    try {
      await api("/v1/jobs", { query: { limit: 1 } });  // the key works and may read jobs
      window.location.hash = "#/jobs";
      route();
    } catch (error) {
      credentials.forget();
      note.textContent = error.message;
      note.hidden = false;
    }
  } }, h("label", { for: "api-key" }, "API key"), key, h("button", { type: "submit" }, "Log in"), note);
  replace(root, h("h1", {}, "Log in"), h("p", {}, "The key stays in this tab only (sessionStorage)."), form);
  key.focus();
  return () => {};
}

function route(message) {
  leave();
  banner.hidden = true;
  if (!credentials.key) {
    nav.hidden = true;
    leave = loginView(view, message);
    return;
  }
  nav.hidden = false;
  const [, section, id] = (window.location.hash.replace(/^#\/?/, "").match(/^([a-z]+)(?:\/([^/?]+))?/) || []);
  const context = { report, id: id && decodeURIComponent(id) };
  if (section === "pipelines") leave = id ? pipelineView(view, context) : pipelinesView(view, context);
  else if (section === "jobs" && id) leave = jobView(view, context);
  else leave = jobsView(view, context);
}

document.getElementById("logout").addEventListener("click", () => {
  credentials.forget();
  window.location.hash = "";
  route();
});
window.addEventListener("hashchange", () => route());
route();
