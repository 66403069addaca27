"""A Python client for the tuneq API: one method per route, typed by tuneq.models (generated from the server's
/openapi.json, so it cannot drift). Needs httpx only; it never imports the server's code.

    from tuneq.client import Client
    with Client("http://127.0.0.1:8000", api_key) as tq:
        job = tq.submit_job({"kind": "test", "spec": {"steps": 3}})
        final = tq.wait(job["id"])
"""

from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import httpx

from tuneq.errors import ApiError, ServiceUnreachable
from tuneq.models import (
    ArtifactList,
    ArtifactOut,
    ChatResponse,
    CheckpointsPage,
    EventList,
    EventRead,
    JobList,
    JobRead,
    MetricsPage,
    PipelineList,
    PipelineRead,
    PreviewOut,
    RenderOut,
)
from tuneq.sse import parse_events

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
RETRY_STATUSES = frozenset({429, 503})
Progress = Callable[[int], None]  # called with the bytes moved since the last call
CHUNK = 1 << 16


class Client:
    """`retries` bounds the attempts after a connection error or a 429/503 (whose Retry-After is honoured up to
    `max_retry_wait` seconds); other errors raise ApiError at once."""

    def __init__(self, url: str, api_key: str, *, retries: int = 4, backoff: float = 0.5,
                 max_retry_wait: float = 30.0, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.max_retry_wait = retries, backoff, max_retry_wait
        # Reads may last as long as the longest long-poll (/wait?timeout=120) plus a margin.
        self._http = httpx.Client(base_url=self.url, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}", "User-Agent": "tuneq-client"},
                                  timeout=httpx.Timeout(timeout, read=150))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- jobs ------------------------------------------------------------------------------------------------
    def submit_job(self, body: dict[str, Any], *, dry_run: bool = False,
                   idempotency_key: str | None = None) -> JobRead:
        """Submit a job (`{"kind": ..., "spec": ...}`); with dry_run, the validated spec and its estimate.
        An Idempotency-Key is always sent, so a retry after a dropped connection never submits twice."""
        return cast(JobRead, self._json("POST", "/v1/jobs", json=body, params={"dry_run": dry_run} if dry_run else None,
                                        headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex}))

    def get_job(self, job_id: str) -> JobRead:
        return cast(JobRead, self._json("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self, *, kind: str | None = None, status: str | None = None, label: str | None = None,
                  created_after: str | None = None, limit: int = 50, cursor: str | None = None) -> JobList:
        params = {"kind": kind, "status": status, "label": label, "created_after": created_after, "limit": limit,
                  "cursor": cursor}
        return cast(JobList, self._json("GET", "/v1/jobs", params=params))

    def cancel_job(self, job_id: str) -> JobRead:
        return cast(JobRead, self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def resume_job(self, job_id: str) -> JobRead:
        return cast(JobRead, self._json("POST", f"/v1/jobs/{job_id}/resume"))

    def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 60.0) -> JobRead:
        """The job once it has ended (or its state when `timeout` seconds have passed), by long-polls of at
        most `poll` seconds each."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            job = cast(JobRead, self._json("GET", f"/v1/jobs/{job_id}/wait", params={"timeout": min(left, 120.0)}))
            if job["status"] in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
                return job

    def events(self, job_id: str, *, after: int = 0) -> Iterator[EventRead]:
        """The job's events after seq `after`, live until its terminal event. A dropped stream is reopened with
        Last-Event-ID, so no event is lost or repeated."""
        last, failures = after, 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            response = self._send("GET", f"/v1/jobs/{job_id}/events", headers=headers, stream=True)
            try:
                for event in parse_events(response.iter_lines()):
                    last, failures = event["seq"], 0
                    yield cast(EventRead, event)
                    if event["type"] in TERMINAL:
                        return
            except httpx.TransportError:
                pass  # dropped mid-stream
            finally:
                response.close()
            # Dropped, or closed by a server that is stopping: resume where we were, after a pause.
            failures += 1
            if failures > self.retries:
                raise ServiceUnreachable(f"the event stream of {job_id} kept dropping")
            time.sleep(self._backoff(failures - 1))

    def event_page(self, job_id: str, *, after: int = 0, limit: int = 100) -> EventList:
        """A JSON page of events (no stream): `{data, has_more, next_cursor}`."""
        return cast(EventList, self._json("GET", f"/v1/jobs/{job_id}/events", params={"after": after, "limit": limit}))

    # -- pipelines -------------------------------------------------------------------------------------------
    def submit_pipeline(self, body: dict[str, Any], *, dry_run: bool = False,
                        idempotency_key: str | None = None) -> PipelineRead:
        return cast(PipelineRead, self._json(
            "POST", "/v1/pipelines", json=body, params={"dry_run": dry_run} if dry_run else None,
            headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex}))

    def get_pipeline(self, pipeline_id: str) -> PipelineRead:
        return cast(PipelineRead, self._json("GET", f"/v1/pipelines/{pipeline_id}"))

    def list_pipelines(self, *, limit: int = 50, cursor: str | None = None) -> PipelineList:
        return cast(PipelineList, self._json("GET", "/v1/pipelines", params={"limit": limit, "cursor": cursor}))

    def cancel_pipeline(self, pipeline_id: str) -> PipelineRead:
        return cast(PipelineRead, self._json("POST", f"/v1/pipelines/{pipeline_id}/cancel"))

    # -- files and artifacts ---------------------------------------------------------------------------------
    def upload_file(self, path: str | Path, *, name: str | None = None, labels: list[str] | None = None,
                    on_progress: Progress | None = None) -> ArtifactOut:
        """Stream a dataset file from disk (never read whole into memory). Not retried once sent: the
        route has no Idempotency-Key, and a retry could store the file twice."""
        path = Path(path)

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while block := f.read(CHUNK):
                    if on_progress:
                        on_progress(len(block))
                    yield block

        params = {"filename": path.name, "name": name, "label": labels}
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)}
        return cast(ArtifactOut, self._json("POST", "/v1/files", params=params, content=chunks, headers=headers,
                                            resend=False))

    def list_files(self, *, name: str | None = None, label: str | None = None, limit: int = 50,
                   cursor: str | None = None) -> ArtifactList:
        return cast(ArtifactList, self._json("GET", "/v1/files", params={"name": name, "label": label,
                                                                          "limit": limit, "cursor": cursor}))

    def list_artifacts(self, *, job_id: str | None = None, kind: str | None = None, limit: int = 50,
                       cursor: str | None = None) -> ArtifactList:
        return cast(ArtifactList, self._json("GET", "/v1/artifacts", params={"job_id": job_id, "kind": kind,
                                                                              "limit": limit, "cursor": cursor}))

    def get_artifact(self, artifact_id: str) -> ArtifactOut:
        return cast(ArtifactOut, self._json("GET", f"/v1/artifacts/{artifact_id}"))

    def download_artifact(self, artifact_id: str, dest: str | Path, *,
                          on_progress: Callable[[int, int | None], None] | None = None) -> Path:
        """Stream an artifact's content to `dest` (a file, or a folder to put it in under its own name);
        `on_progress(bytes_so_far, total)` after each chunk. Written to a temporary name, then renamed."""
        response = self._send("GET", f"/v1/artifacts/{artifact_id}/content", stream=True)
        try:
            dest = Path(dest)
            if dest.is_dir():
                dest = dest / _filename(response, artifact_id)
            total = int(response.headers["content-length"]) if "content-length" in response.headers else None
            partial, done = dest.with_name(dest.name + ".part"), 0
            with partial.open("wb") as f:
                for block in response.iter_bytes(CHUNK):
                    f.write(block)
                    done += len(block)
                    if on_progress:
                        on_progress(done, total)
            partial.replace(dest)
            return dest
        except httpx.TransportError as exc:
            raise ServiceUnreachable(f"the download of {artifact_id} was cut off: {exc}") from exc
        finally:
            response.close()

    def preview_artifact(self, artifact_id: str, *, rows: int = 5) -> PreviewOut:
        return cast(PreviewOut, self._json("GET", f"/v1/artifacts/{artifact_id}/preview", params={"rows": rows}))

    def render_artifact(self, artifact_id: str, *, row: int = 0, train_on: str | None = None,
                        enable_thinking: bool | None = None) -> RenderOut:
        params = {"row": row, "train_on": train_on, "enable_thinking": enable_thinking}
        return cast(RenderOut, self._json("POST", f"/v1/artifacts/{artifact_id}/render", params=params))

    # -- training outputs ------------------------------------------------------------------------------------
    def list_checkpoints(self, job_id: str, *, after: str | None = None, limit: int = 100) -> CheckpointsPage:
        return cast(CheckpointsPage, self._json("GET", f"/v1/jobs/{job_id}/checkpoints",
                                                params={"after": after, "limit": limit}))

    def metrics(self, job_id: str, *, names: str | None = None, after_step: int | None = None,
                limit: int | None = None) -> MetricsPage:
        """Training metrics as `series[name] = [[step, value], ...]`; `names` is comma-separated."""
        params = {"names": names, "after_step": after_step, "limit": limit}
        return cast(MetricsPage, self._json("GET", f"/v1/jobs/{job_id}/metrics", params=params))

    def chat(self, ref: str, messages: list[dict[str, Any]], **options: Any) -> ChatResponse:
        """One reply from a checkpoint (its id or tinker:// path) or a base model; options as in ChatRequest
        (max_tokens, temperature, seed, ...)."""
        return cast(ChatResponse, self._json("POST", f"/v1/checkpoints/{quote(ref, safe='')}/chat",
                                             json={"messages": messages, **options}, resend=False))

    def export_checkpoint(self, checkpoint_id: str, body: dict[str, Any] | None = None, *,
                          idempotency_key: str | None = None) -> JobRead:
        """Start an export job for a checkpoint (body as in CheckpointExportCreate)."""
        return cast(JobRead, self._json("POST", f"/v1/checkpoints/{checkpoint_id}/export", json=body or {},
                                        headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex}))

    # -- transport -------------------------------------------------------------------------------------------
    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def _send(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
              content: Callable[[], Iterator[bytes]] | None = None, headers: dict[str, str] | None = None,
              stream: bool = False, resend: bool = True) -> httpx.Response:
        """One request with bounded retries. `resend=False`: retry only when the request never left (a refused
        connection), for routes where a second delivery would act twice."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            request = self._http.build_request(method, path, params=query, json=json, headers=headers,
                                               content=content() if content else None)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if last or not (resend or unsent):
                    raise ServiceUnreachable(f"could not reach {self.url}: {exc}") from exc
                time.sleep(self._backoff(attempt))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                response.close()
                time.sleep(min(self.max_retry_wait, _retry_after(response) or self._backoff(attempt)))
                continue
            if response.status_code >= 400:
                response.read()
                try:
                    body = response.json()
                except ValueError:
                    body = response.text
                raise ApiError.from_body(response.status_code, body, _retry_after(response))
            return response
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def _backoff(self, attempt: int) -> float:
        return float(min(self.max_retry_wait, self.backoff * 2 ** attempt))


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):  # neither seconds nor an HTTP date (a proxy's garbage): no hint
            return None
        return max(0.0, when.timestamp() - time.time()) if when else None


def _filename(response: httpx.Response, fallback: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "filename" and value.strip('"'):
            return Path(value.strip('"')).name
    return fallback
