// The job and pipeline lists, paged with the API's cursors (never the whole list: a team may hold thousands of
// jobs), refreshed every few seconds so statuses stay live; and a pipeline's page with its steps.

import { api } from "./api.js";
import { FINISHED, h, labelsText, replace, statusBadge, when } from "./dom.js";

const PAGE_SIZE = 25;
const REFRESH_MS = 3000;
const KINDS = ["", "dataset", "generation", "training", "evaluation", "export", "test"];
const STATUSES = ["", "pending", "queued", "running", "succeeded", "failed", "cancelled"];

function progressText(progress) {
  if (!progress || progress.done === undefined) return "";
  return progress.total ? `${progress.done}/${progress.total} ${progress.unit || ""}` : `${progress.done}`;
}

// A list of pages: cursors[i] opens page i; Next pushes the page's next_cursor. Kept across visits.
function pager() {
  return { cursors: [null], page: 0, next: null };
}

function pageButtons(paging, load) {
  const prev = h("button", { type: "button", disabled: paging.page === 0, onclick: () => {
    paging.page -= 1;
    load();
  } }, "‹ Newer");
  const next = h("button", { type: "button", className: "next-page", disabled: !paging.next, onclick: () => {
    paging.cursors[paging.page + 1] = paging.next;
    paging.page += 1;
    load();
  } }, "Older ›");
  return h("div", { className: "pager" }, prev, h("span", {}, `page ${paging.page + 1}`), next);
}

// Reloads the current page every REFRESH_MS, one request at a time; returns the view's cleanup.
function live(load) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try { await load(); } finally { busy = false; }
  };
  tick();
  const timer = setInterval(tick, REFRESH_MS);
  return () => clearInterval(timer);
}

const jobsState = { filters: { kind: "", status: "", label: "" }, paging: pager() };

export function jobsView(root, { report }) {
  const { filters } = jobsState;
  const select = (name, options) => h("select", { name, onchange: (e) => { filters[name] = e.target.value; } },
    options.map((o) => h("option", { value: o, selected: filters[name] === o }, o || `any ${name}`)));
  const label = h("input", { name: "label", placeholder: "label name:value", value: filters.label,
                             oninput: (e) => { filters.label = e.target.value.trim(); } });
  const form = h("form", { className: "filters", onsubmit: (e) => {
    e.preventDefault();
    jobsState.paging = pager();
    load();
  } }, select("kind", KINDS), select("status", STATUSES), label, h("button", { type: "submit" }, "Filter"));
  const rows = h("tbody", { id: "job-rows" });
  const footer = h("div");
  replace(root, h("h1", {}, "Jobs"), form,
          h("table", { className: "list" }, h("thead", {}, h("tr", {}, ["Job", "Kind", "Status", "Progress",
            "Labels", "Created"].map((t) => h("th", {}, t)))), rows), footer);

  let latest = 0;
  async function load() {
    const { paging } = jobsState;
    const ticket = ++latest;
    try {
      const page = await api("/v1/jobs", { query: { ...filters, limit: PAGE_SIZE,
                                                    cursor: paging.cursors[paging.page] } });
      if (ticket !== latest) return;  // a newer load (a filter, another page) answers instead
      paging.next = page.has_more ? page.next_cursor : null;
      replace(rows, page.data.length ? page.data.map((job) => h("tr", { "data-job-id": job.id },
        h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)), h("td", {}, job.kind),
        h("td", {}, statusBadge(job.status)), h("td", {}, progressText(job.progress)),
        h("td", {}, labelsText(job.labels)), h("td", {}, when(job.created_at))))
        : h("tr", {}, h("td", { colspan: 6, className: "empty" }, "No jobs match.")));
      replace(footer, pageButtons(paging, load));
      report(null);
    } catch (error) {
      report(error);
    }
  }
  return live(load);
}

const pipelinesState = { paging: pager() };

function stepsSummary(steps) {
  const done = steps.filter((s) => s.status === "succeeded").length;
  return `${done}/${steps.length} succeeded`;
}

export function pipelinesView(root, { report }) {
  const rows = h("tbody", { id: "pipeline-rows" });
  const footer = h("div");
  replace(root, h("h1", {}, "Pipelines"),
          h("table", { className: "list" }, h("thead", {}, h("tr", {}, ["Pipeline", "Name", "Status", "Steps",
            "Labels", "Created"].map((t) => h("th", {}, t)))), rows), footer);

  let latest = 0;
  async function load() {
    const { paging } = pipelinesState;
    const ticket = ++latest;
    try {
      const page = await api("/v1/pipelines", { query: { limit: PAGE_SIZE, cursor: paging.cursors[paging.page] } });
      if (ticket !== latest) return;  // a newer load (a filter, another page) answers instead
      paging.next = page.has_more ? page.next_cursor : null;
      replace(rows, page.data.length ? page.data.map((p) => h("tr", { "data-pipeline-id": p.id },
        h("td", {}, h("a", { href: `#/pipelines/${p.id}` }, p.id)), h("td", {}, p.name || ""),
        h("td", {}, statusBadge(p.status)), h("td", {}, stepsSummary(p.steps)),
        h("td", {}, labelsText(p.labels)), h("td", {}, when(p.created_at))))
        : h("tr", {}, h("td", { colspan: 6, className: "empty" }, "No pipelines yet.")));
      replace(footer, pageButtons(paging, load));
      report(null);
    } catch (error) {
      report(error);
    }
  }
  return live(load);
}

export function pipelineView(root, { id, report }) {
  const head = h("div");
  const rows = h("tbody");
  replace(root, head, h("table", { className: "list" }, h("thead", {}, h("tr", {}, ["Step", "Job", "Kind",
    "Status", "Progress", "Waits for", "Error"].map((t) => h("th", {}, t)))), rows));
  let stop = () => {};

  async function load() {
    try {
      const p = await api(`/v1/pipelines/${encodeURIComponent(id)}`);
      const cancel = h("button", { type: "button", className: "danger", disabled: FINISHED.has(p.status),
                                   onclick: async () => {
        try { await api(`/v1/pipelines/${encodeURIComponent(id)}/cancel`, { method: "POST" }); await load(); }
        catch (error) { report(error); }
      } }, "Cancel pipeline");
      replace(head, h("h1", {}, `Pipeline ${p.name || p.id}`),
              h("p", {}, statusBadge(p.status), " ", p.id, " · ", labelsText(p.labels), " · created ",
                when(p.created_at)), cancel);
      replace(rows, p.steps.map((s) => h("tr", {}, h("td", {}, s.name),
        h("td", {}, h("a", { href: `#/jobs/${s.job_id}` }, s.job_id)), h("td", {}, s.kind),
        h("td", {}, statusBadge(s.status)), h("td", {}, progressText(s.progress)),
        h("td", {}, s.depends_on.join(", ")), h("td", {}, s.error ? s.error.message : ""))));
      report(null);
      if (FINISHED.has(p.status)) stop();
    } catch (error) {
      report(error);
    }
  }
  stop = live(load);
  return () => stop();
}
