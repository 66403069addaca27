// Talking to /v1 with the key kept in sessionStorage: JSON calls, and a job's event stream read with fetch()
// (EventSource cannot send an Authorization header).

const KEY = "tuneq.apiKey";

export const credentials = {
  get key() { return sessionStorage.getItem(KEY); },
  save(key) { sessionStorage.setItem(KEY, key); },
  forget() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `The server answered ${status}.`);
    this.status = status;
    this.problem = problem;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${credentials.key}`, ...extra };
}

function url(path, query = {}) {
  const u = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") u.searchParams.set(name, value);
  }
  return u;
}

export async function api(path, { method = "GET", query, signal } = {}) {
  const response = await fetch(url(path, query), { method, headers: headers({ Accept: "application/json" }), signal });
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

function parseFrame(frame) {
  // One SSE frame: "id:", "event:", "data:" lines; comment lines (": ping") carry nothing.
  let id = null;
  let type = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = Number(value);
    else if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { id, type, data: JSON.parse(data.join("\n")) } : null;
}

// Reads GET /v1/jobs/{id}/events as text/event-stream, calling onEvent(event) for each; after a dropped
// connection it reconnects with Last-Event-ID, so no event is lost or repeated. Resolves with the last seq when
// the server ends the stream (the job ended) or the signal aborts.
export async function followEvents(jobId, { after = 0, onEvent, signal }) {
  let last = after;
  let pause = 500;
  while (!signal.aborted) {
    try {
      const response = await fetch(url(`/v1/jobs/${encodeURIComponent(jobId)}/events`), {
        headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(last) }), signal,
      });
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        if (response.status !== 429 && response.status < 500) throw new ApiError(response.status, body);
        await sleep(1000 * Number(response.headers.get("Retry-After") || 2), signal);
        continue;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return last;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (event) {
            last = event.id ?? last;
            pause = 500;
            onEvent(event.data);
          }
        }
      }
    } catch (error) {
      if (signal.aborted) break;
      if (error instanceof ApiError) throw error;
      await sleep(pause, signal);  // the connection dropped: resume after the last event seen
      pause = Math.min(pause * 2, 10000);
    }
  }
  return last;
}
