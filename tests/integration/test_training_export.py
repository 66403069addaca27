"""`export_adapter: true`: the final LoRA weights are exported by (fake) Tinker, downloaded over plain HTTP from
signed URLs by the real worker, and stored as `adapter` artifacts with their sha256."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from safetensors.numpy import load as load_safetensors

from tests.fakes.tinker_fake import ADAPTER_TENSOR, FakeTinker, external_files, read_checkpoint
from tests.support import Stack
from workers.clients.tinker import datum_from

BASE = "Qwen/Qwen3-8B"


def _dataset(client: httpx.Client, rows: int = 16) -> dict[str, Any]:
    data = b"".join(orjson.dumps({"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
    ]}) + b"\n" for i in range(rows))
    upload = client.post("/v1/files", params={"name": "export.jsonl"}, content=data)
    assert upload.status_code == 201, upload.text
    job = client.post("/v1/jobs", json={"kind": "dataset", "spec": {
        "source": {"type": "artifact", "artifact_id": upload.json()["id"]}}}).json()
    done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 60}).json()
    assert done["status"] == "succeeded", done["error"]
    return done["result"]  # type: ignore[no-any-return]


def test_export_adapter_downloads_the_final_weights_as_artifacts(stack: Stack, client: httpx.Client) -> None:
    dataset = _dataset(client)
    r = client.post("/v1/jobs", json={"kind": "training", "spec": {
        "base_model": BASE, "train_artifact": dataset["train_artifact"], "rank": 8, "batch_size": 4, "epochs": 1,
        "export_adapter": True}})
    assert r.status_code == 201, r.text
    job = client.get(f"/v1/jobs/{r.json()['id']}/wait", params={"timeout": 60}).json()
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    path = result["adapter_path"]
    assert path.startswith("tinker://") and "/external_weights/" in path

    state_dir = json.loads(stack.env["TUNEQ_TINKER_FAKE_CONFIG"])["state_dir"]
    written = external_files(state_dir, path)
    assert set(written) == {"adapter_model.safetensors", "adapter_config.json"}

    ids = result["adapter_artifacts"]
    assert len(ids) == len(written)
    by_name: dict[str, bytes] = {}
    for artifact_id in ids:
        meta = client.get(f"/v1/artifacts/{artifact_id}").json()
        assert meta["kind"] == "adapter" and meta["job_id"] == job["id"] and meta["rows"] is None
        assert meta["meta"] == {"tinker_path": path}
        assert meta["format"] == meta["name"].rsplit(".", 1)[1]
        content = client.get(f"/v1/artifacts/{artifact_id}/content")
        assert content.status_code == 200
        assert hashlib.sha256(content.content).hexdigest() == meta["sha256"]
        assert len(content.content) == meta["bytes"]
        assert content.content == written[meta["name"]].read_bytes()
        by_name[meta["name"]] = content.content

    config = json.loads(by_name["adapter_config.json"])
    assert config["base_model_name_or_path"] == BASE and config["r"] == 8
    weights = load_safetensors(by_name["adapter_model.safetensors"])[ADAPTER_TENSOR]
    final = np.asarray(read_checkpoint(state_dir, result["state_path"])["params"], dtype=np.float32)
    assert np.array_equal(weights, final) and np.any(weights != 0)  # the trained weights, not the initial ones


def test_fake_signed_urls_expire_check_signatures_and_inject_download_faults(tmp_path: Any) -> None:
    fake = FakeTinker(state_dir=str(tmp_path), faults=[{"op": "download", "kind": "http_500", "at": [1]}])
    try:
        client = fake.service_client().create_lora_training_client(base_model=BASE, rank=4).result()
        client.forward_backward([datum_from([1, 2, 3, 4], [0, 1, 1, 1])], "cross_entropy").result()
        path = client.save_weights_external("adapter").result().path
        with pytest.warns(FutureWarning):
            rest = fake.service_client().create_rest_client()
        urls = rest.get_external_weights_urls(path).result().urls
        assert set(urls) == set(fake.external_files(path))
        first = sorted(urls)[0]
        assert httpx.get(urls[first]).status_code == 500  # the injected fault, once
        assert httpx.get(urls[first]).content == fake.external_files(path)[first].read_bytes()
        assert httpx.get(urls[first].replace("sig=", "sig=0")).status_code == 403
        assert httpx.get(urls[first].replace("expires=", "expires=1")).status_code == 403  # signed expiry
        stale = FakeTinker(state_dir=str(tmp_path), url_ttl_seconds=-1)  # same files, URLs born expired
        try:
            with pytest.warns(FutureWarning):
                stale_urls = stale.service_client().create_rest_client().get_external_weights_urls(path).result()
            response = httpx.get(stale_urls.urls[first])
            assert response.status_code == 403 and b"expired" in response.content
        finally:
            stale.close()
        with pytest.raises(Exception, match="not found"):
            rest.get_external_weights_urls(path + "-missing").result()
    finally:
        fake.close()


def test_a_failed_download_is_transient_and_never_reveals_the_signed_url(tmp_path: Any) -> None:
    from workers.errors import RetryJob
    from workers.pipelines.adapter_export import _download

    fake = FakeTinker(state_dir=str(tmp_path), faults=[{"op": "download", "kind": "http_503", "at": [1]},
                                                        {"op": "download", "kind": "connection", "at": [2]}])
    try:
        client = fake.service_client().create_lora_training_client(base_model=BASE, rank=4).result()
        path = client.save_weights_external("adapter").result().path
        with pytest.warns(FutureWarning):
            urls = fake.service_client().create_rest_client().get_external_weights_urls(path).result().urls
        chunks: list[bytes] = []
        sink = type("Sink", (), {"write": staticmethod(chunks.append)})()
        with httpx.Client(timeout=5) as http:
            for file, expected in (("adapter_config.json", "HTTP 503"), ("adapter_model.safetensors", "Error")):
                with pytest.raises(RetryJob) as caught:
                    _download(http, urls[file], file, sink)
                assert caught.value.code == "adapter_download_failed" and expected in caught.value.message
                assert file in caught.value.message and "sig" not in caught.value.message
                assert "127.0.0.1" not in caught.value.message
            _download(http, urls["adapter_config.json"], "adapter_config.json", sink)  # next attempt works
        assert b"".join(chunks) == fake.external_files(path)["adapter_config.json"].read_bytes()
    finally:
        fake.close()
