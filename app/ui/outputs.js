// What a job made, each a section of its page: training checkpoints (copyable tinker:// paths and their
// scores), artifacts with their preview and the render preview (tokens coloured by loss weight), and an
// evaluation's samples side by side with the judge's verdicts.

import { api } from "./api.js";
import { copyable, h, number, replace } from "./dom.js";

const enc = encodeURIComponent;

export function checkpointsSection(jobId, report) {
  const rows = h("tbody", { id: "checkpoint-rows" });
  const el = h("section", {}, h("h2", {}, "Checkpoints"), h("table", { className: "list" },
    h("thead", {}, h("tr", {}, ["Step", "Kind", "loss", "val_loss", "eval_loss", "tinker:// path",
      "Sampler weights"].map((t) => h("th", {}, t)))), rows));

  async function load() {
    try {
      const all = [];
      let after;
      for (;;) {
        const page = await api(`/v1/jobs/${enc(jobId)}/checkpoints`, { query: { after, limit: 1000 } });
        all.push(...page.data);
        if (!page.has_more) break;
        after = page.next_cursor;
      }
      replace(rows, all.length ? all.map((c) => h("tr", {}, h("td", {}, c.step), h("td", {}, c.kind),
        h("td", {}, number(c.loss)), h("td", {}, number(c.val_loss)), h("td", {}, number(c.eval_loss)),
        h("td", {}, copyable(c.uri)), h("td", {}, c.sampler_uri ? copyable(c.sampler_uri) : "—")))
        : h("tr", {}, h("td", { colspan: 7, className: "empty" }, "No checkpoints yet.")));
    } catch (error) {
      report(error);
    }
  }
  return { el, load };
}

function renderPreview(result) {
  const tokens = result.pieces.map((text, i) => h("span", {
    className: result.weights[i] ? "tok trained" : "tok", title: `token ${result.tokens[i]} · weight ${result.weights[i]}`,
  }, text));
  return h("div", { className: "render" },
    h("p", {}, `${result.num_tokens} tokens, ${result.trained_tokens} trained (highlighted: loss weight 1)`),
    h("div", { className: "tokens" }, tokens));
}

function artifactRow(artifact, report) {
  const out = h("div", { className: "artifact-output" });
  const preview = h("button", { type: "button", onclick: async () => {
    try {
      const page = await api(`/v1/artifacts/${enc(artifact.id)}/preview`, { query: { rows: 5 } });
      replace(out, h("pre", { className: "preview" }, page.rows.map((r) => JSON.stringify(r, null, 2)).join("\n\n")));
    } catch (error) { report(error); }
  } }, "Preview");
  const row = h("input", { type: "number", min: 0, value: 0, className: "row-number", title: "row to render" });
  const render = artifact.format === "chatml_jsonl" && h("span", {}, " row ", row, h("button", { type: "button",
    onclick: async () => {
      try {
        const result = await api(`/v1/artifacts/${enc(artifact.id)}/render`, { method: "POST",
                                                                               query: { row: row.value || 0 } });
        replace(out, renderPreview(result));
      } catch (error) { report(error); }
    } }, "Render"));
  return h("li", { "data-artifact-id": artifact.id },
    h("div", {}, h("strong", {}, artifact.name), ` · ${artifact.kind} · ${artifact.format} · `,
      artifact.rows ?? "?", " rows · ", artifact.id, " ", preview, render), out);
}

export function artifactsSection(job, report) {
  const list = h("ul", { className: "artifacts" });
  const el = h("section", {}, h("h2", {}, "Artifacts"), list);
  // Its inputs (spec fields naming an artifact) and what it made.
  const inputs = Object.entries(job.spec || {})
    .filter(([name, value]) => name.endsWith("_artifact") && typeof value === "string").map(([, value]) => value);

  async function load() {
    try {
      const made = await api("/v1/artifacts", { query: { job_id: job.id, limit: 50 } });
      const used = await Promise.all(inputs.map((id) => api(`/v1/artifacts/${enc(id)}`).catch(() => null)));
      const all = [...used.filter(Boolean), ...made.data];
      replace(list, all.length ? all.map((a) => artifactRow(a, report)) : h("li", { className: "empty" }, "None yet."));
    } catch (error) {
      report(error);
    }
  }
  return { el, load };
}

function lastUserText(messages) {
  const user = (messages || []).filter((m) => m.role === "user").pop();
  return user ? String(user.content) : "";
}

export function samplesSection(jobId, report) {
  const rows = h("tbody", { id: "sample-rows" });
  const verdict = h("select", {}, ["", "win", "tie", "loss", "error"].map((v) => h("option", { value: v },
    v || "any verdict")));
  let after = null;
  const more = h("button", { type: "button", hidden: true, onclick: () => load(false) }, "More samples");
  verdict.addEventListener("change", () => load(true));
  const el = h("section", {}, h("h2", {}, "Samples"), verdict, h("table", { className: "list samples" },
    h("thead", {}, h("tr", {}, ["Row", "Model", "Prompt", "Reply", "Compared with", "Verdict", "Reason"]
      .map((t) => h("th", {}, t)))), rows), more);

  async function load(fresh = true) {
    try {
      if (fresh) after = null;
      const page = await api(`/v1/jobs/${enc(jobId)}/samples`, { query: { verdict: verdict.value, after, limit: 50 } });
      const made = page.data.map((s) => h("tr", {}, h("td", {}, s.row), h("td", {}, s.model),
        h("td", { className: "text" }, lastUserText(s.messages)), h("td", { className: "text" }, s.reply ?? ""),
        h("td", { className: "text" }, s.opponent ? `${s.opponent}: ${s.opponent_reply ?? ""}` : ""),
        h("td", {}, s.verdict ? h("span", { className: `verdict verdict-${s.verdict}` }, s.verdict) : "—"),
        h("td", { className: "text" }, s.reason ?? "")));
      if (fresh) replace(rows, made.length ? made : h("tr", {}, h("td", { colspan: 7, className: "empty" },
        "No samples yet.")));
      else rows.append(...made);
      after = page.next_cursor;
      more.hidden = !page.has_more;
    } catch (error) {
      report(error);
    }
  }
  return { el, load };
}
