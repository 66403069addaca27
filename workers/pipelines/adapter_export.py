"""Adapter export: a training client's LoRA weights are exported (`save_weights_external`), their signed URLs
fetched (`RestClient.get_external_weights_urls`) and each file downloaded into the artifact store as an `adapter`
artifact of the attempt (docs/tinker-sdk-notes.md). Used by training jobs (`export_adapter`, the final weights)
and by export jobs (any checkpoint, workers/pipelines/export.py).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import httpx

from app.services import artifacts as artifacts_service
from workers.clients.tinker import in_thread, result_of
from workers.errors import JobFailed, RetryJob
from workers.lease import JobContext

DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0, pool=10.0)
DOWNLOAD_CHUNK = 1 << 20

log = logging.getLogger(__name__)



class _RedactQuery(logging.Filter):
    """httpx logs every request's full URL at INFO; signed URLs carry credentials in their query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) and a.query for a in record.args):
            record.args = tuple(a.copy_with(query=None) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


_redact_query = _RedactQuery()


def _rest_client(service: Any, ctx: JobContext) -> Any:
    """A RestClient sharing the service client's connections (and, in tests, its fake).

    SDK 0.38 deprecates `ServiceClient.create_rest_client()` in favour of `tinker.RestClient(base_url=...,
    api_key=...)`, but that builds its own connections from credentials, outside the client factory (and the
    test fake). Until the factory offers a RestClient, the deprecated method is the supported way from here.
    """
    def create() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return service.create_rest_client()

    return result_of(in_thread(create), ctx, "create_rest_client")


def _adapter_file_name(file: str) -> PurePosixPath:
    name = PurePosixPath(file)
    if not file or name.is_absolute() or any(part in ("", ".", "..") for part in name.parts):
        raise JobFailed("tinker_error", f"Tinker returned an unusable adapter file name {file!r}.",
                        user_error=False)
    return name


def _download(http: httpx.Client, url: str, file: str, writer: artifacts_service.AtomicWriter,
              on_chunk: Callable[[], None] | None = None) -> None:
    """Stream one signed URL into `writer` (calling `on_chunk` after each chunk). Messages name the file only:
    the URL's query is a credential."""
    try:
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise RetryJob("adapter_download_failed",
                               f"Downloading the exported adapter file {file} failed: HTTP {response.status_code}. "
                               "The job will be retried.")
            for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                writer.write(chunk)
                if on_chunk is not None:
                    on_chunk()
    except httpx.HTTPError as exc:
        raise RetryJob("adapter_download_failed",
                       f"Downloading the exported adapter file {file} failed ({type(exc).__name__}). "
                       "The job will be retried.") from None


def export_adapter(service: Any, client: Any, ctx: JobContext, total_steps: int, *, which: str = "final",
                   report_progress: bool = False) -> dict[str, Any]:
    """Export the client's LoRA weights (`which`: "final", or the step a checkpoint was saved at) in Hugging Face
    format and store every file as an `adapter` artifact; with `report_progress`, the job's progress counts the
    files downloaded (an export job's whole work; a training job keeps its step count)."""
    path = result_of(client.save_weights_external(f"adapter-{total_steps:06d}"), ctx,
                     f"save_weights_external ({which})").path
    urls: dict[str, str] = result_of(_rest_client(service, ctx).get_external_weights_urls(path), ctx,
                                     "get_external_weights_urls").urls
    names = {file: _adapter_file_name(file) for file in urls}
    logging.getLogger("httpx").addFilter(_redact_query)  # idempotent: a logger holds a filter once
    outputs: list[dict[str, Any]] = []
    touched = time.monotonic()

    def touch() -> None:  # a long download is progress, not a stall
        nonlocal touched
        if time.monotonic() - touched >= ctx.progress_interval:
            ctx.write()
            touched = time.monotonic()

    if report_progress:
        ctx.progress(0, len(urls), "files downloaded")
    try:
        with httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as http:
            for file in sorted(urls):
                log.info("job %s: downloading adapter file %s", ctx.job_id, file)
                writer = ctx.artifact_writer(f"adapter/{names[file]}")
                try:
                    _download(http, urls[file], file, writer, touch)
                    writer.commit()
                except BaseException:
                    writer.abort()
                    raise
                suffix = names[file].suffix.lstrip(".").lower()
                outputs.append({"kind": "adapter", "name": names[file].name, "writer": writer,
                                "fmt": suffix or "bin", "rows": None, "meta": {"tinker_path": path}})
                if report_progress:
                    ctx.progress(len(outputs), len(urls), "files downloaded")
                ctx.check()
    except BaseException:
        for output in outputs:  # committed files that will not be registered
            output["writer"].path.unlink(missing_ok=True)
        raise
    ids = ctx.publish_artifacts(outputs)
    ctx.event("adapter_exported", {"path": path, "files": sorted(urls), "artifacts": ids})
    return {"adapter_artifacts": ids, "adapter_path": path}
