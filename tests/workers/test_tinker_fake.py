"""workers/clients/tinker.py and the fake Tinker service, exercised through the real tinker SDK objects."""

from __future__ import annotations

import collections
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import tinker
from pydantic import SecretStr
from tinker import types
from tinker.types import RequestErrorCategory

from tests.fakes.tinker_fake import FakeTinker, batch_fingerprint, read_checkpoint
from workers.clients.tinker import (
    TinkerNotConfigured,
    classify_error,
    datum_from,
    hidden_size_for,
    is_transient,
    is_user_error,
    lr_for,
    make_service_client,
    mean_loss,
    open_client,
    result_of,
    use_fake,
)
from workers.errors import JobCancelled, JobFailed, RetryJob

BASE = "Qwen/Qwen3-8B"
REPO = Path(__file__).resolve().parents[2]


def _settings(**values: object) -> SimpleNamespace:
    return SimpleNamespace(**{"tinker_api_key": None, **values})


def _batches(count: int, *, size: int = 3, seed: int = 7) -> list[list[types.Datum]]:
    """Deterministic chat-like batches: a prompt (weight 0) followed by a completion (weight 1)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        batch = []
        for _ in range(size):
            prompt = rng.integers(0, 2000, int(rng.integers(3, 8))).tolist()
            completion = rng.integers(0, 2000, int(rng.integers(2, 6))).tolist() + [151645]
            batch.append(datum_from(prompt + completion, [0.0] * len(prompt) + [1.0] * len(completion)))
        batches.append(batch)
    return batches


def _adam() -> types.AdamParams:
    return types.AdamParams(learning_rate=lr_for(BASE), beta1=0.9, beta2=0.95, eps=1e-8)


def _train(training: tinker.TrainingClient, batches: list[list[types.Datum]]) -> list[float]:
    losses = []
    for batch in batches:
        fb = training.forward_backward(batch, "cross_entropy")
        op = training.optim_step(_adam())
        losses.append(mean_loss(fb.result(timeout=30), batch))
        op.result(timeout=30)
    return losses


@pytest.fixture
def fake_tinker(tmp_path: Path) -> Iterator[FakeTinker]:
    fake = FakeTinker(state_dir=tmp_path / "tinker")
    with use_fake(fake.service_client):
        yield fake


# ---- pure helpers ------------------------------------------------------------------------------------------

def test_datum_from_shifts_tokens_and_weights() -> None:
    datum = datum_from([10, 11, 12, 13, 14], [0, 0, 1, 1, 1])
    assert datum.model_input.to_ints() == [10, 11, 12, 13]
    target = datum.loss_fn_inputs["target_tokens"]
    weights = datum.loss_fn_inputs["weights"]
    assert (target.data, target.dtype, target.shape) == ([11, 12, 13, 14], "int64", [4])
    assert (weights.data, weights.dtype, weights.shape) == ([0.0, 1.0, 1.0, 1.0], "float32", [4])

    cut = datum_from([1, 2, 3, 4, 5], [1, 1, 1, 1, 1], max_length=3)
    assert cut.model_input.to_ints() == [1, 2] and cut.loss_fn_inputs["target_tokens"].data == [2, 3]
    with pytest.raises(ValueError):
        datum_from([1, 2, 3], [1, 1])
    with pytest.raises(ValueError):
        datum_from([1], [1])


def test_lr_for_reproduces_the_cookbook_formula() -> None:
    assert lr_for(BASE) == pytest.approx(4.73e-4, rel=0.01)
    assert lr_for(BASE) == pytest.approx(5e-4 * (2000 / 4096) ** 0.0775)
    expected_hidden = {"Qwen/Qwen3-0.6B": 1024, "Qwen/Qwen3-1.7B": 2048, "Qwen/Qwen3-4B-Instruct-2507": 2560,
                       "Qwen/Qwen3-8B-Base": 4096, "Qwen/Qwen3-14B": 5120, "Qwen/Qwen3-32B": 5120,
                       "Qwen/Qwen3-30B-A3B": 2048, "Qwen/Qwen3-235B-A22B-Instruct-2507": 4096}
    for name, hidden in expected_hidden.items():
        assert hidden_size_for(name) == hidden
    assert lr_for("Qwen/Qwen3-0.6B") > lr_for("Qwen/Qwen3-8B") > lr_for("Qwen/Qwen3-32B")
    with pytest.raises(ValueError):
        lr_for("mistralai/Mistral-7B")


def test_classification_of_sdk_exceptions() -> None:
    request = httpx.Request("POST", "https://tinker.fake.invalid/api/v1/forward_backward")

    def status(cls: type[tinker.APIStatusError], code: int) -> tinker.APIStatusError:
        return cls("boom", response=httpx.Response(code, request=request), body=None)

    cases: list[tuple[BaseException, str]] = [
        (tinker.APIConnectionError(request=request), "transient"),
        (tinker.APITimeoutError(request=request), "transient"),
        (status(tinker.InternalServerError, 503), "transient"),
        (status(tinker.RateLimitError, 429), "transient"),
        (status(tinker.BadRequestError, 400), "user"),
        (status(tinker.NotFoundError, 404), "user"),
        (status(tinker.AuthenticationError, 401), "fatal"),
        (tinker.RequestFailedError("bad", "r1", RequestErrorCategory.User), "user"),
        (tinker.RequestFailedError("oops", "r2", RequestErrorCategory.Server), "transient"),
        (TimeoutError(), "transient"),
        (KeyError("bug"), "fatal"),
    ]
    for exc, expected in cases:
        assert classify_error(exc) == expected, exc
        assert is_user_error(exc) == (expected == "user")
        assert is_transient(exc) == (expected == "transient")
    try:  # the SDK wraps some errors: the cause decides
        try:
            raise status(tinker.BadRequestError, 400)
        except tinker.BadRequestError as inner:
            raise ValueError("Error retrieving result") from inner
    except ValueError as wrapped:
        assert is_user_error(wrapped)


# ---- the factory -------------------------------------------------------------------------------------------

def test_make_service_client_needs_a_well_formed_key() -> None:
    for key in (None, SecretStr(""), SecretStr("sk-not-a-tinker-key-123")):
        with pytest.raises(TinkerNotConfigured) as info:
            make_service_client(_settings(tinker_api_key=key))
        assert isinstance(info.value, JobFailed)
        assert info.value.code == "tinker_not_configured" and info.value.user_error is False
        assert "sk-not-a-tinker-key-123" not in str(info.value)


def test_use_fake_overrides_and_restores() -> None:
    sentinel = object()
    with use_fake(lambda: sentinel):
        assert make_service_client(_settings()) is sentinel
        with use_fake(lambda: "inner"):
            assert make_service_client(_settings()) == "inner"
        assert make_service_client(_settings()) is sentinel
    with pytest.raises(TinkerNotConfigured):
        make_service_client(_settings())


def test_fake_enabled_by_settings_like_a_worker_process(tmp_path: Path) -> None:
    settings = _settings(tinker_fake="tests.fakes.tinker_fake:make_fake_service_client",
                         tinker_fake_config=json.dumps({"state_dir": str(tmp_path)}))
    service = make_service_client(settings)
    assert isinstance(service, tinker.ServiceClient)
    training = service.create_lora_training_client(base_model=BASE, rank=8).result(timeout=30)
    assert isinstance(training, tinker.TrainingClient)
    _train(training, _batches(1))
    path = training.save_state("one").result(timeout=30).path
    assert read_checkpoint(tmp_path, path)["lineage"][0]["fingerprint"] == batch_fingerprint(_batches(1)[0])

    with pytest.raises(TinkerNotConfigured):
        make_service_client(_settings(tinker_fake="tests.fakes.tinker_fake"))
    with pytest.raises(TinkerNotConfigured):
        make_service_client(_settings(tinker_fake="tests.fakes.tinker_fake:nothing_here"))


# ---- training through the SDK ------------------------------------------------------------------------------

def test_training_lowers_the_loss_with_real_sdk_objects(fake_tinker: FakeTinker) -> None:
    service = make_service_client(_settings())
    training = service.create_lora_training_client(base_model=BASE, rank=32).result(timeout=30)
    assert training.get_info().model_data.model_name == BASE
    batch = _batches(1)[0]
    losses = []
    for _ in range(6):
        fb = training.forward_backward(batch, "cross_entropy")
        op = training.optim_step(_adam())
        assert isinstance(fb, tinker.APIFuture) and isinstance(op, tinker.APIFuture)
        out = fb.result(timeout=30)
        assert isinstance(out, tinker.ForwardBackwardOutput)
        assert isinstance(op.result(timeout=30), tinker.OptimStepResponse)
        assert len(out.loss_fn_outputs) == len(batch)
        recomputed = sum(-float(np.dot(o["logprobs"].data, d.loss_fn_inputs["weights"].data))
                         for o, d in zip(out.loss_fn_outputs, batch, strict=True))
        assert out.metrics["loss:sum"] == pytest.approx(recomputed, rel=1e-5)
        losses.append(mean_loss(out, batch))
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.9 * losses[0]


def test_mask_changes_the_loss_and_forward_changes_nothing(fake_tinker: FakeTinker) -> None:
    training = make_service_client(_settings()).create_lora_training_client(base_model=BASE).result(timeout=30)
    tokens = [5, 6, 7, 8, 9, 10, 151645]
    completion_only = [datum_from(tokens, [0, 0, 0, 1, 1, 1, 1])]
    everything = [datum_from(tokens, [1] * len(tokens))]
    first = training.forward(completion_only, "cross_entropy").result(timeout=30)
    second = training.forward(everything, "cross_entropy").result(timeout=30)
    again = training.forward(completion_only, "cross_entropy").result(timeout=30)
    assert first.metrics["loss:sum"] != pytest.approx(second.metrics["loss:sum"])
    assert again.metrics["loss:sum"] == first.metrics["loss:sum"]
    assert not fake_tinker.params(training.model_id).any()  # forward never touches the weights
    assert fake_tinker.lineage(training.model_id) == []


def test_requests_execute_in_submission_order(tmp_path: Path) -> None:
    fake = FakeTinker(state_dir=tmp_path, latency={"forward_backward": 0.03, "optim_step": 0.0, "save": 0.01})
    training = fake.service_client().create_lora_training_client(base_model=BASE).result(timeout=30)
    batches = _batches(3)
    futures: list[tinker.APIFuture[Any]] = []
    for batch in batches:  # nothing awaited until everything is submitted
        futures.append(training.forward_backward(batch, "cross_entropy"))
        futures.append(training.optim_step(_adam()))
    futures.append(training.save_state("after-three"))
    for future in reversed(futures):
        future.result(timeout=30)
    executed = [c for c in fake.calls if c["model_id"] == training.model_id and c["op"] != "create_model"]
    assert [c["op"] for c in executed] == ["forward_backward", "optim_step"] * 3 + ["save_state"]
    assert [c["seq_id"] for c in executed] == list(range(1, 8))
    assert fake.applied_fingerprints(training.model_id) == [batch_fingerprint(b) for b in batches]


def test_resume_from_checkpoint_continues_exactly(tmp_path: Path) -> None:
    batches = _batches(6)
    straight = FakeTinker(state_dir=tmp_path / "straight")
    uninterrupted = straight.service_client().create_lora_training_client(base_model=BASE).result(timeout=30)
    expected_losses = _train(uninterrupted, batches)
    expected_params = straight.params(uninterrupted.model_id)

    state = tmp_path / "resumed"
    first = FakeTinker(state_dir=state)
    training = first.service_client().create_lora_training_client(base_model=BASE).result(timeout=30)
    losses = _train(training, batches[:3])
    saved = training.save_state("step-3").result(timeout=30)
    assert isinstance(saved, types.SaveWeightsResponse)
    parsed = types.ParsedCheckpointTinkerPath.from_tinker_path(saved.path)
    assert parsed.training_run_id == training.model_id and parsed.checkpoint_type == "training"

    second = FakeTinker(state_dir=state)  # another process: only the directory is shared
    service = second.service_client()
    resumed = service.create_training_client_from_state_with_optimizer(saved.path).result(timeout=30)
    assert resumed.model_id != training.model_id
    losses += _train(resumed, batches[3:])
    assert losses == expected_losses
    assert np.array_equal(second.params(resumed.model_id), expected_params)
    assert second.applied_fingerprints(resumed.model_id) == [batch_fingerprint(b) for b in batches]
    final = resumed.save_state("final").result(timeout=30).path
    assert [s["fingerprint"] for s in read_checkpoint(state, final)["lineage"]] == [
        batch_fingerprint(b) for b in batches]
    sampler = resumed.save_weights_for_sampler("final").result(timeout=30)
    assert isinstance(sampler, types.SaveWeightsForSamplerResponse)
    assert types.ParsedCheckpointTinkerPath.from_tinker_path(sampler.path).checkpoint_type == "sampler"

    replayed = service.create_training_client_from_state_with_optimizer(saved.path).result(timeout=30)
    _train(replayed, batches[2:])  # batch 3 applied twice
    assert not np.array_equal(second.params(replayed.model_id), expected_params)
    counts = collections.Counter(second.applied_fingerprints(replayed.model_id))
    assert counts[batch_fingerprint(batches[2])] == 2

    weights_only = service.create_training_client_from_state(saved.path).result(timeout=30)
    _train(weights_only, batches[3:])  # Adam moments start over: a different trajectory
    assert not np.array_equal(second.params(weights_only.model_id), expected_params)

    with pytest.raises(tinker.RequestFailedError) as info:
        resumed.save_state("final").result(timeout=30)
    assert is_user_error(info.value)


def test_worker_process_killed_then_resumed(tmp_path: Path) -> None:
    config = json.dumps({"state_dir": str(tmp_path)})
    script = textwrap.dedent(f"""
        import sys, time
        from types import SimpleNamespace
        from tests.workers.test_tinker_fake import _batches, _train
        from workers.clients.tinker import make_service_client
        settings = SimpleNamespace(tinker_api_key=None,
                                   tinker_fake="tests.fakes.tinker_fake:make_fake_service_client",
                                   tinker_fake_config={config!r})
        training = make_service_client(settings).create_lora_training_client(base_model={BASE!r}).result()
        _train(training, _batches(4)[:2])
        print(training.save_state("step-2").result().path, flush=True)
        _train(training, _batches(4)[2:3])  # applied, but never checkpointed
        print("more", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert proc.stdout.readline().strip() == "more", proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert path.startswith("tinker://"), path

    fake = FakeTinker(state_dir=tmp_path)
    resumed = fake.service_client().create_training_client_from_state_with_optimizer(path).result(timeout=30)
    batches = _batches(4)
    _train(resumed, batches[2:])
    assert fake.applied_fingerprints(resumed.model_id) == [batch_fingerprint(b) for b in batches]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_client_built_in_a_forked_child_gets_a_live_sdk_loop(fake_tinker: FakeTinker) -> None:
    parent = make_service_client(_settings()).create_lora_training_client(base_model=BASE).result(timeout=30)
    _train(parent, _batches(1))  # the SDK's I/O thread now runs in this process
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child = make_service_client(_settings()).create_lora_training_client(base_model=BASE).result(timeout=10)
            _train(child, _batches(1))
            child.save_state("from-child").result(timeout=10)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the inherited SDK event loop")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0
    assert any(path.endswith("/weights/from-child") for path in fake_tinker.checkpoints())


# ---- faults ------------------------------------------------------------------------------------------------

def test_user_error_fails_the_future_and_applies_nothing(tmp_path: Path) -> None:
    fake = FakeTinker(state_dir=tmp_path, faults=[{"op": "forward_backward", "kind": "user_error", "at": [2]}])
    training = fake.service_client().create_lora_training_client(base_model=BASE).result(timeout=30)
    batches = _batches(3)
    _train(training, batches[:1])
    fb = training.forward_backward(batches[1], "cross_entropy")
    op = training.optim_step(_adam())
    with pytest.raises(tinker.RequestFailedError) as info:
        fb.result(timeout=30)
    assert info.value.category is RequestErrorCategory.User
    assert is_user_error(info.value) and not is_transient(info.value)
    op.result(timeout=30)  # later requests still run
    _train(training, batches[2:])
    assert fake.applied_fingerprints(training.model_id) == [batch_fingerprint(batches[0]),
                                                            batch_fingerprint(batches[2])]


def test_unknown_base_model_is_a_user_error(fake_tinker: FakeTinker) -> None:
    service = make_service_client(_settings())
    with pytest.raises(tinker.RequestFailedError) as info:
        service.create_lora_training_client(base_model="Qwen/Qwen9-1T").result(timeout=30)
    assert is_user_error(info.value) and "not supported" in str(info.value)
    with pytest.raises(tinker.RequestFailedError) as missing:
        service.create_training_client_from_state_with_optimizer(
            "tinker://nobody:train:0/weights/none").result(timeout=30)
    assert is_user_error(missing.value)


def test_transient_faults_are_absorbed_by_sdk_retries(tmp_path: Path) -> None:
    fake = FakeTinker(state_dir=tmp_path, faults=[
        {"op": "forward_backward", "kind": "http_503", "at": [1], "times": 2},
        {"op": "optim_step", "kind": "http_429", "at": [1]},
        {"op": "forward_backward", "kind": "connection", "at": [2]},
        {"op": "forward_backward", "kind": "http_502", "at": [3], "when": "after"},  # response lost
    ])
    training = fake.service_client().create_lora_training_client(base_model=BASE).result(timeout=30)
    batches = _batches(3)
    _train(training, batches)
    assert len(fake.faults_injected) == 5
    assert fake.applied_fingerprints(training.model_id) == [batch_fingerprint(b) for b in batches]
    assert sum(1 for c in fake.calls if c["op"] == "forward_backward") == 3  # the lost response ran once


@pytest.mark.parametrize(("kind", "expected"), [
    ("connection", tinker.APIConnectionError),
    ("timeout", tinker.APITimeoutError),
    ("http_500", tinker.InternalServerError),
    ("http_429", tinker.RateLimitError),
    ("server_error", tinker.RequestFailedError),
])
def test_surfaced_faults_raise_sdk_exceptions(tmp_path: Path, kind: str, expected: type[Exception]) -> None:
    fake = FakeTinker(state_dir=tmp_path,
                      faults=[{"op": "forward_backward", "kind": kind, "at": [2], "surface": True}])
    training = fake.service_client().create_lora_training_client(base_model=BASE).result(timeout=30)
    batches = _batches(2)
    _train(training, batches[:1])
    path = training.save_state("good").result(timeout=30).path
    fb = training.forward_backward(batches[1], "cross_entropy")
    op = training.optim_step(_adam())
    with pytest.raises(expected) as info:
        fb.result(timeout=30)
    assert is_transient(info.value) and not is_user_error(info.value)
    if kind == "server_error":
        op.result(timeout=30)  # the request was accepted and failed; the run goes on
    else:
        with pytest.raises(tinker.RequestFailedError) as after:  # the run lost a request: it cannot go on
            op.result(timeout=30)
        assert after.value.category is RequestErrorCategory.Server and is_transient(after.value)
    resumed = fake.service_client().create_training_client_from_state_with_optimizer(path).result(timeout=30)
    _train(resumed, batches[1:])
    assert fake.applied_fingerprints(resumed.model_id) == [batch_fingerprint(b) for b in batches]


def test_faults_by_probability_are_deterministic(tmp_path: Path) -> None:
    def failed_steps(directory: Path) -> list[int]:
        fake = FakeTinker(state_dir=directory, seed=3,
                          faults=[{"op": "optim_step", "kind": "server_error", "probability": 0.5}])
        training = fake.service_client().create_lora_training_client(base_model=BASE).result(timeout=30)
        failed = []
        for step, batch in enumerate(_batches(8)):
            training.forward_backward(batch, "cross_entropy").result(timeout=30)
            try:
                training.optim_step(_adam()).result(timeout=30)
            except tinker.RequestFailedError as exc:
                assert is_transient(exc)
                failed.append(step)
        assert [f["call"] for f in fake.faults_injected] == [step + 1 for step in failed]
        return failed

    first = failed_steps(tmp_path / "a")
    assert first == failed_steps(tmp_path / "b") and 0 < len(first) < 8


def test_hang_fault_never_answers_and_sticks_the_run(tmp_path: Path) -> None:
    fake = FakeTinker(state_dir=tmp_path, poll_wait=0.1,
                      faults=[{"op": "forward_backward", "kind": "hang", "at": [2]}])
    training = fake.service_client().create_lora_training_client(base_model=BASE).result(timeout=30)
    batches = _batches(2)
    _train(training, batches[:1])
    path = training.save_state("before").result(timeout=30).path
    fb = training.forward_backward(batches[1], "cross_entropy")
    op = training.optim_step(_adam())
    with pytest.raises(TimeoutError):  # a bound on a future that never resolves, not a timing assertion
        fb.result(timeout=1)
    with pytest.raises(TimeoutError):  # queued behind it on the stuck run
        op.result(timeout=0.5)
    for pending in (fb, op):  # stop the SDK polling them for the rest of the session
        pending.future().cancel()
    assert [f["kind"] for f in fake.faults_injected] == ["hang"]
    assert [c for c in fake.calls if c.get("hung")][0]["op"] == "forward_backward"
    resumed = fake.service_client().create_training_client_from_state_with_optimizer(path).result(timeout=30)
    _train(resumed, batches[1:])  # a new run from the checkpoint is not stuck
    assert fake.applied_fingerprints(resumed.model_id) == [batch_fingerprint(b) for b in batches]


class _Waits:
    """A stand-in for the job context's `wait`: records what was waited on."""

    def __init__(self, stop: Exception | None = None) -> None:
        self.stop, self.waited = stop, []

    def wait(self, future: Any, what: str) -> Any:
        self.waited.append(what)
        if self.stop is not None:
            raise self.stop
        return future.result(timeout=30)


def test_result_of_waits_through_the_context_and_classifies_failures(tmp_path: Path) -> None:
    fake = FakeTinker(state_dir=tmp_path, faults=[
        {"op": "forward_backward", "kind": "user_error", "at": [2]},
        {"op": "forward_backward", "kind": "server_error", "at": [3]},
        {"op": "forward_backward", "kind": "hang", "at": [4]},
    ])
    ctx = _Waits()
    training = open_client(lambda: fake.service_client().create_lora_training_client(base_model=BASE), ctx,
                           "create_lora_training_client")
    assert isinstance(training, tinker.TrainingClient)
    batch = _batches(1)[0]
    out = result_of(training.forward_backward(batch, "cross_entropy"), ctx, "forward_backward step 1")
    assert mean_loss(out, batch) > 0
    with pytest.raises(JobFailed) as rejected:
        result_of(training.forward_backward(batch, "cross_entropy"), ctx, "forward_backward step 2")
    assert rejected.value.code == "tinker_rejected" and "forward_backward step 2" in rejected.value.message
    with pytest.raises(RetryJob) as unavailable:
        result_of(training.forward_backward(batch, "cross_entropy"), ctx, "forward_backward step 3")
    assert unavailable.value.code == "tinker_unavailable" and "forward_backward step 3" in unavailable.value.message
    assert ctx.waited == ["create_lora_training_client"] * 2 + [f"forward_backward step {n}" for n in (1, 2, 3)]
    # How the job ends (a cancel, a shutdown, a lost lease) passes through unclassified, and the SDK stops
    # polling for the result nobody will read.
    hung = training.forward_backward(batch, "cross_entropy")  # fake call 4: hangs
    with pytest.raises(JobCancelled):
        result_of(hung, _Waits(JobCancelled()), "forward_backward step 4")
    assert hung.future().cancelled()


# ---- sampling ----------------------------------------------------------------------------------------------

def test_sampling_client_from_saved_weights(fake_tinker: FakeTinker) -> None:
    service = make_service_client(_settings())
    training = service.create_lora_training_client(base_model=BASE).result(timeout=30)
    batch = _batches(1)[0]
    _train(training, [batch] * 3)
    path = training.save_weights_for_sampler("eval").result(timeout=30).path
    sampler = service.create_sampling_client(model_path=path).result(timeout=30)
    assert isinstance(sampler, tinker.SamplingClient) and sampler.get_base_model() == BASE

    prompt = types.ModelInput.from_ints([151644, 872, 198, 9707, 11, 1879, 0])
    result = sampler.sample(prompt, 2, types.SamplingParams(max_tokens=8, seed=1)).result(timeout=30)
    assert isinstance(result, types.SampleResponse) and len(result.sequences) == 2
    for sequence in result.sequences:
        assert 1 <= len(sequence.tokens) <= 8 and len(sequence.logprobs or []) == len(sequence.tokens)
        assert sequence.stop_reason in ("stop", "length")

    tokens = batch[0].model_input.to_ints() + [int(batch[0].loss_fn_inputs["target_tokens"].data[-1])]
    logprobs = sampler.compute_logprobs(types.ModelInput.from_ints(tokens)).result(timeout=30)
    assert logprobs[0] is None and len(logprobs) == len(tokens)
    forward = training.forward([batch[0]], "cross_entropy").result(timeout=30)
    assert logprobs[1:] == pytest.approx(forward.loss_fn_outputs[0]["logprobs"].data, abs=1e-6)
    assert not math.isnan(sum(x for x in logprobs if x is not None))


def test_runs_keep_the_user_metadata_they_were_created_with(tmp_path: Path) -> None:
    fake = FakeTinker(state_dir=tmp_path)
    service = fake.service_client()
    tags = {"tuneq_job_id": "job_1", "tuneq_team_id": "team_1"}
    training = service.create_lora_training_client(base_model=BASE, user_metadata=tags).result(timeout=30)
    saved = training.save_state("step-1").result(timeout=30).path
    assert training.get_info().model_data.model_name == BASE  # the model info still parses
    resumed = service.create_training_client_from_state_with_optimizer(
        saved, user_metadata={**tags, "tuneq_job_id": "job_2"}).result(timeout=30)
    untagged = service.create_lora_training_client(base_model=BASE).result(timeout=30)
    assert fake.run_metadata == [tags, {**tags, "tuneq_job_id": "job_2"}, None]
    assert read_checkpoint(tmp_path, saved)["run_user_metadata"] == tags
    assert read_checkpoint(tmp_path, resumed.save_state("again").result(timeout=30).path)["run_user_metadata"] == {
        **tags, "tuneq_job_id": "job_2"}
    assert untagged.model_id not in {training.model_id, resumed.model_id}
