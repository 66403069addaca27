// A job's page, live without a reload: its status and progress, its events as they arrive (the SSE stream read
// with fetch), the loss chart growing step by step, its outputs, and cancel / resume.

import { api, followEvents } from "./api.js";
import { drawLoss, lossChart } from "./chart.js";
import { FINISHED, h, labelsText, replace, statusBadge, when } from "./dom.js";
import { artifactsSection, checkpointsSection, samplesSection } from "./outputs.js";

const POLL_MS = 2000;  // progress lands in the row every step; events only every few seconds
const EVENTS_SHOWN = 200;

export function jobView(root, { id, report }) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const stop = new AbortController();
  const status = h("span", { id: "job-status" });
  const bar = h("progress", { id: "job-progress", max: 1, value: 0 });
  const progressText = h("span", { className: "progress-text" });
  const problem = h("div", { className: "job-error", hidden: true });
  const facts = h("p", { className: "facts" });
  const cancel = h("button", { type: "button", id: "cancel", className: "danger", onclick: () => act("cancel") },
                   "Cancel");
  const resume = h("button", { type: "button", id: "resume", onclick: () => act("resume") }, "Resume");
  const spec = h("pre", { className: "json" });
  const result = h("pre", { className: "json" });
  const events = h("ol", { id: "events", className: "events", reversed: true });
  const sections = h("div");
  replace(root, h("h1", {}, "Job ", h("code", {}, id), " ", status), facts,
          h("div", { className: "actions" }, cancel, resume), h("div", { className: "progress" }, bar, progressText),
          problem, sections, h("details", {}, h("summary", {}, "Spec"), spec),
          h("details", {}, h("summary", {}, "Result"), result),
          h("section", {}, h("h2", {}, "Events"), events));

  let job = null;
  let moving = false;  // seen unfinished: its outputs are read again when it ends
  let lastSeq = 0;
  let streaming = false;
  let chart = null;
  const outputs = [];

  function showProgress(progress) {
    if (!progress || progress.done === undefined) return;
    bar.max = progress.total || 1;
    bar.value = Math.min(progress.done, bar.max);
    const eta = progress.eta_seconds !== undefined ? ` · about ${Math.round(progress.eta_seconds)} s left` : "";
    const loss = progress.loss !== undefined ? ` · loss ${Number(progress.loss).toPrecision(4)}` : "";
    progressText.textContent = `${progress.done}/${progress.total ?? "?"} ${progress.unit || ""}${loss}${eta}`;
  }

  function showJob(next) {
    job = next;
    moving ||= !FINISHED.has(job.status);
    replace(status, statusBadge(job.status));
    status.dataset.status = job.status;
    replace(facts, `${job.kind} · attempt ${job.attempt}/${job.max_attempts} · ${job.preemptions} preemptions · `,
            `created ${when(job.created_at)} · started ${when(job.started_at)} · finished ${when(job.finished_at)}`,
            job.pipeline_id ? [" · step ", job.pipeline_step, " of ", h("a", { href: `#/pipelines/${job.pipeline_id}` },
              job.pipeline_id)] : "", Object.keys(job.labels).length ? ` · ${labelsText(job.labels)}` : "");
    showProgress(job.progress);
    if (job.status === "succeeded") bar.value = bar.max;
    problem.hidden = !job.error;
    problem.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
    cancel.disabled = FINISHED.has(job.status);
    resume.disabled = !["failed", "cancelled"].includes(job.status);
    spec.textContent = JSON.stringify(job.spec, null, 2);
    result.textContent = job.result ? JSON.stringify(job.result, null, 2) : "No result yet.";
  }

  let reads = 0;
  async function refreshJob() {
    const ticket = ++reads;
    const next = await api(path);
    if (ticket === reads) showJob(next);  // an older answer landing late does not undo a newer one
  }

  // Steps by metric name. The final validation loss lands after the last step's loss, so when the job ends the
  // whole series is read again; while it runs, only the steps after the last one drawn.
  const series = { loss: new Map(), val_loss: new Map() };
  let lastStep = -1;
  let chain = Promise.resolve();
  let nextQueued = false;

  async function fetchMetrics(fresh) {
    if (fresh) {
      lastStep = -1;
      for (const points of Object.values(series)) points.clear();
    }
    for (;;) {
      const page = await api(`${path}/metrics`, { query: { names: "loss,val_loss", after_step: lastStep,
                                                           limit: 1000 } });
      for (const name of Object.keys(series)) {
        for (const [step, value] of page.series[name] || []) series[name].set(step, value);
      }
      const steps = Object.values(page.series).flat().map(([step]) => step);
      lastStep = page.has_more ? page.next_cursor : Math.max(lastStep, ...steps);
      if (!page.has_more) break;
    }
    const sorted = (points) => [...points.entries()].sort((a, b) => a[0] - b[0]);
    drawLoss(chart, { loss: sorted(series.loss), val_loss: sorted(series.val_loss) });
  }

  function loadMetrics(fresh = false) {
    // One fetch at a time; an incremental one asked for while another waits is the same one.
    if (!chart) return Promise.resolve();
    if (!fresh && nextQueued) return chain;
    if (!fresh) nextQueued = true;
    chain = chain.then(() => {
      if (!fresh) nextQueued = false;
      return fetchMetrics(fresh);
    }).catch(report);
    return chain;
  }

  function addEvent(event) {
    lastSeq = Math.max(lastSeq, event.seq);
    const data = Object.keys(event.data || {}).length ? ` ${JSON.stringify(event.data)}` : "";
    events.prepend(h("li", { "data-type": event.type }, h("time", {}, when(event.created_at)), " ",
                     h("strong", {}, event.type), data));
    while (events.children.length > EVENTS_SHOWN) events.lastChild.remove();
  }

  function onEvent(event) {
    addEvent(event);
    if (event.type === "progress") {
      showProgress(event.data);
      loadMetrics();
      return;
    }
    refreshJob().catch(report);
    if (event.type === "checkpoint" || event.type === "checkpoint_scored") outputs[0]?.load();
  }

  let followAgain = false;
  async function stream() {
    // One stream at a time; asked again while one is closing (a resume right after the end), it starts anew.
    if (streaming) {
      followAgain = true;
      return;
    }
    streaming = true;
    try {
      while (!stop.signal.aborted) {
        lastSeq = await followEvents(id, { after: lastSeq, onEvent, signal: stop.signal });
        if (stop.signal.aborted) return;
        await refreshJob();
        if (FINISHED.has(job.status)) break;
        await new Promise((resolve) => setTimeout(resolve, 1000));  // the server closed it early: reconnect
      }
      if (moving) {
        moving = false;
        await Promise.all([loadMetrics(true), ...outputs.map((o) => o.load())]);
      }
    } catch (error) {
      report(error);
    } finally {
      streaming = false;
      if (followAgain && !stop.signal.aborted) {
        followAgain = false;
        stream();
      }
    }
  }

  async function act(action) {
    try {
      showJob(await api(`${path}/${action}`, { method: "POST" }));
      report(null);
      stream();
    } catch (error) {
      report(error);
    }
  }

  async function start() {
    try {
      await refreshJob();
      if (job.kind === "training") {
        chart = lossChart();
        chart.id = "loss-chart";
        sections.append(h("section", {}, h("h2", {}, "Loss"), chart));
        outputs.push(checkpointsSection(id, report));
      }
      if (job.kind === "evaluation") outputs.push(samplesSection(id, report));
      outputs.push(artifactsSection(job, report));
      sections.append(...outputs.map((o) => o.el));
      await Promise.all([loadMetrics(true), ...outputs.map((o) => o.load())]);
      report(null);
      stream();
    } catch (error) {
      report(error);
    }
  }

  // Between progress events (a few seconds apart) the row and the metrics still move every step.
  const timer = setInterval(() => {
    if (!job || FINISHED.has(job.status)) return;
    refreshJob().then(() => loadMetrics()).catch(report);
  }, POLL_MS);
  start();
  return () => {
    clearInterval(timer);
    stop.abort();
  };
}
