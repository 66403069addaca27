"""Estimates (app/services/estimates.py) on a real database and real artifact files: the training estimate counts
exactly what the training job builds (its own rows, batches and datums), created jobs use the dataset job's
statistics, and every kind answers in the common shape."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from app.chat import render
from app.chat.fit import fit, iter_conversations, run_tokens, schedule
from app.db import session_scope
from app.models import Artifact, Job, utcnow
from app.schemas.common import OutputRef
from app.schemas.datasets import DatasetSpec
from app.schemas.evaluation import EvaluationSpec
from app.schemas.generation import GenerationSpec
from app.schemas.training import TrainingSpec
from app.services import artifacts as artifacts_service
from app.services import auth, estimates
from app.settings import Settings
from workers.pipelines.rows import Dataset, fit_rows
from workers.pipelines.training import _datums, batch_rows, make_plan

pytestmark = pytest.mark.usefixtures("backend")


def conversations(n: int = 57) -> list[dict[str, Any]]:
    """Rows of varied lengths; every 7th has its only assistant turn at weight 0 (nothing to train), every 11th
    is long (over a small max_length), some have two assistant turns."""
    rows = []
    for i in range(n):
        answer = f"Step {i}: " + "think about it " * (40 if i % 11 == 5 else i % 6)
        messages: list[dict[str, Any]] = [{"role": "user", "content": f"Question {i} about topic {i % 4}?"},
                                          {"role": "assistant", "content": answer}]
        if i % 3 == 0:
            messages += [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": f"Then {i}."}]
        if i % 7 == 0:
            messages = messages[:2]
            messages[1]["weight"] = 0
        rows.append({"messages": messages})
    return rows


def _team() -> auth.Caller:
    with session_scope() as session:
        team = auth.get_or_create_team(session, f"team-{uuid.uuid4().hex[:8]}")
        return auth.Caller(team_id=team.id, key_id="key", scopes=("jobs:write",))


def _artifact(caller: auth.Caller, rows: list[dict[str, Any]], *, fmt: str = "chatml_jsonl",
              made_by: dict[str, Any] | None = None, counted: bool = True) -> str:
    """A ChatML artifact file and its row, as a dataset job registers it (with its token statistics)."""
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    uri = f"{caller.team_id}/{uuid.uuid4().hex}/train.jsonl"
    path = artifacts_service.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    meta: dict[str, Any] = {}
    with session_scope() as session:
        job_id = None
        if made_by is not None:
            job = Job(team_id=caller.team_id, kind="dataset", status="succeeded", spec=made_by, labels={})
            session.add(job)
            session.flush()
            job_id = job.id
            if counted:
                lengths = [len(render(r["messages"], train_on=made_by.get("train_on", "all_assistant")).tokens)
                           for r in rows]
                trained = [render(r["messages"], train_on=made_by.get("train_on", "all_assistant")).trained_tokens
                           for r in rows]
                meta = {"split": "train", "tokens": sum(lengths), "trainable_tokens": sum(trained),
                        "token_distribution": {"min": min(lengths), "max": max(lengths)}}
        artifact = Artifact(team_id=caller.team_id, job_id=job_id, kind="dataset" if made_by else "upload",
                            name="train.jsonl", uri=uri, format=fmt, rows=len(rows) if made_by else None,
                            bytes=len(data), sha256=None, meta=meta, created_at=utcnow())
        session.add(artifact)
        session.flush()
        return artifact.id


def _estimate(caller: auth.Caller, kind: str, spec: Any, settings: Settings | None = None, *,
              dry_run: bool = True) -> dict[str, Any]:
    with session_scope() as session:
        out = estimates.estimate(session, caller, kind, spec, settings or Settings(), dry_run=dry_run)
    assert out is not None
    assert {"exact", "cost_usd", "duration_seconds", "notes"} <= set(out)
    return out


def _sent_by_training(path: Any, spec: TrainingSpec) -> tuple[dict[str, Any], int, int]:
    """What the training job itself builds: its plan, and Σ tokens / trained tokens of the datums of every
    step (workers/pipelines/training.py's own functions)."""
    fitted = fit_rows(Dataset(path, None), "training", max_length=spec.max_length, train_on=spec.train_on,
                      enable_thinking=spec.enable_thinking)
    plan = make_plan(spec, fitted)
    tokens = trained = 0
    for step in range(plan.total_steps):
        batch = _datums(spec, fitted.rows, batch_rows(spec, plan, step))
        assert batch.tokens == sum(len(d.loss_fn_inputs["target_tokens"].data) for d in batch.datums)
        tokens += batch.tokens
        trained += int(batch.trained)
    return plan.as_dict(), tokens, trained


@pytest.mark.parametrize("shape", [
    {"batch_size": 8, "epochs": 2},                    # a remainder left out of every epoch
    {"batch_size": 5, "epochs": 3, "max_steps": 17},   # cut mid-epoch
    {"batch_size": 64, "max_steps": 3},                # fewer rows than a batch
    {"batch_size": 4, "epochs": 1, "max_length": 60, "train_on": "last_assistant"},
])
def test_dry_run_counts_exactly_what_training_sends(shape: dict[str, Any]) -> None:
    caller = _team()
    rows = conversations()
    artifact = _artifact(caller, rows, made_by={"train_on": "all_assistant"})
    spec = TrainingSpec.model_validate({"train_artifact": artifact, "seed": 3, "max_length": 120, **shape})
    out = _estimate(caller, "training", spec)

    with session_scope() as session:
        path = artifacts_service.path_of(session, team_id=caller.team_id, artifact_id=artifact)[0]
    plan, tokens, trained = _sent_by_training(path, spec)
    assert out["exact"] is True and out["basis"] == "rendered"
    assert out["rows"] == len(rows) and out["examples"] == plan["examples"] < len(rows)  # long / weight-0 dropped
    assert out["tokens_per_epoch"] == plan["tokens_per_epoch"]
    assert out["trained_tokens_per_epoch"] == plan["trained_tokens_per_epoch"]
    assert (out["steps_per_epoch"], out["total_steps"], out["batch_size"]) == (
        plan["steps_per_epoch"], plan["total_steps"], plan["batch_size"])
    assert (out["tokens"], out["trained_tokens"]) == (tokens, trained)


def test_partial_epochs_past_the_replay_limit_fall_back_to_the_mean() -> None:
    rows = [(i, r["messages"]) for i, r in enumerate(conversations(30))]
    fitted = fit(rows, max_length=10_000, train_on="all_assistant", enable_thinking=True, per_row=True)
    sched = schedule(fitted.examples, batch_size=7, epochs=5, max_steps=None)
    exact = run_tokens(fitted, 0, sched)
    approx = run_tokens(fitted, 0, sched, max_orders=2)
    assert exact[2] is True and approx[2] is False
    assert abs(approx[0] - exact[0]) < 0.2 * exact[0]


def test_cost_and_duration_come_from_the_settings_tables() -> None:
    caller = _team()
    artifact = _artifact(caller, conversations(20), made_by={})
    spec = TrainingSpec.model_validate({"train_artifact": artifact, "batch_size": 4, "epochs": 2})
    unpriced = _estimate(caller, "training", spec)
    assert unpriced["cost_usd"] is None and unpriced["duration_seconds"] is None
    assert any("TUNEQ_TRAINING_PRICE_PER_MTOK" in n for n in unpriced["notes"])

    settings = Settings(training_price_per_mtok={"Qwen/Qwen3-8B": 2.5},
                        training_tokens_per_second={"Qwen/Qwen3-8B": 1000.0})
    priced = _estimate(caller, "training", spec, settings)
    assert priced["cost_usd"] == pytest.approx(priced["tokens"] * 2.5 / 1e6)
    assert priced["duration_seconds"] == pytest.approx(priced["tokens"] / 1000.0, abs=0.1)


def test_created_job_records_the_dataset_jobs_statistics_without_rendering() -> None:
    caller = _team()
    rows = [r for i, r in enumerate(conversations(40)) if i % 7 and i % 11 != 5]  # all fit, all trained
    artifact = _artifact(caller, rows, made_by={"train_on": "all_assistant"})
    spec = TrainingSpec.model_validate({"train_artifact": artifact, "batch_size": 4, "epochs": 1})
    created = _estimate(caller, "training", spec, dry_run=False)
    exact = _estimate(caller, "training", spec)
    assert created["basis"] == "dataset_stats" and created["exact"] is False
    assert created["examples"] == exact["examples"] == len(rows)
    assert created["tokens_per_epoch"] == exact["tokens_per_epoch"]
    assert created["trained_tokens_per_epoch"] == exact["trained_tokens_per_epoch"]
    assert created["total_steps"] == exact["total_steps"]

    other = TrainingSpec.model_validate({"train_artifact": artifact, "train_on": "last_assistant"})
    unmatched = _estimate(caller, "training", other, dry_run=False)
    assert unmatched["basis"] == "rows" and unmatched["tokens_per_epoch"] is None
    assert unmatched["examples"] == len(rows) and any("dry run" in n for n in unmatched["notes"])


def test_nothing_fits_is_said_in_a_note_not_a_crash() -> None:
    caller = _team()
    artifact = _artifact(caller, conversations(10), made_by={})
    out = _estimate(caller, "training", TrainingSpec.model_validate({"train_artifact": artifact,
                                                                     "max_length": 16}))
    assert out["examples"] == 0 and out["total_steps"] == 0
    assert any("would fail" in n and "max_length=16" in n for n in out["notes"])


def test_an_output_not_made_yet_is_unknown_with_a_note() -> None:
    caller = _team()
    spec = TrainingSpec.model_validate({"train_artifact": {"$ref": "data.train_artifact"}, "max_steps": 12})
    assert isinstance(spec.train_artifact, OutputRef)
    out = _estimate(caller, "training", spec)
    assert out["exact"] is False and out["examples"] is None and out["total_steps"] == 12
    assert any("data.train_artifact" in n for n in out["notes"])


def test_generation_items_tokens_and_cost() -> None:
    caller = _team()
    spec = GenerationSpec.model_validate({"preset": "scaffolding", "count": 200})
    out = _estimate(caller, "generation", spec)
    assert out["items"] == 200 and out["prompt_tokens_per_item"] > 20
    assert out["completion_tokens_per_item"] == 2048  # the preset's max_tokens: an upper bound
    assert out["prompt_tokens"] == 200 * out["prompt_tokens_per_item"]
    assert out["completion_tokens"] == 200 * 2048 and out["cost_usd"] is None

    settings = Settings(generation_prices={"moonshotai/kimi-k2": {"prompt": 1.0, "completion": 3.0}})
    priced = _estimate(caller, "generation", spec, settings, dry_run=False)
    assert priced["cost_usd"] == pytest.approx((out["prompt_tokens"] * 1.0 + out["completion_tokens"] * 3.0) / 1e6)
    topics = GenerationSpec.model_validate({"prompt": "Ask about {{ topic }}", "topics": ["a", "b", "c"],
                                            "per_topic": 4, "requests_per_second": 2})
    out = _estimate(caller, "generation", topics, Settings(estimate_completion_tokens=300))
    assert out["items"] == 12 and out["completion_tokens"] == 12 * 300 and out["duration_seconds"] == 6.0


def test_dataset_on_an_upload_counts_rows_and_tokens_in_a_dry_run() -> None:
    caller = _team()
    rows = [{"prompt": f"Say {i}", "completion": f"{i} " * (i % 5 + 1)} for i in range(30)]
    upload = _artifact(caller, rows, fmt="jsonl")
    spec = DatasetSpec.model_validate({"source": {"type": "artifact", "artifact_id": upload}, "max_examples": 20})
    created = _estimate(caller, "dataset", spec, dry_run=False)
    assert created["rows"] is None and created["bytes"] > 0 and created["tokens"] is None
    out = _estimate(caller, "dataset", spec)
    assert out["rows"] == 30 and out["rows_out_at_most"] == 20 and out["cost_usd"] == 0.0
    convs = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]
             for r in rows]
    mean = sum(len(render(c).tokens) for c in convs) / len(convs)
    assert out["tokens"] == round(mean * 20)


def test_evaluation_dry_run_counts_scored_tokens_per_model() -> None:
    caller = _team()
    rows = conversations(12)
    artifact = _artifact(caller, rows, made_by={})
    spec = EvaluationSpec.model_validate({"eval_artifact": artifact, "checkpoints": [], "max_examples": 10,
                                          "samples": 3, "max_tokens": 50})
    out = _estimate(caller, "evaluation", spec)
    kept = [r for r in rows[:10] if render(r["messages"]).trained_tokens > 0]
    assert out["models"] == 1 and out["examples"] == len(kept) and out["exact"] is True
    assert out["scored_tokens"] == sum(render(r["messages"]).trained_tokens for r in kept)
    assert out["sampled_replies"] == 3 and out["max_sampled_tokens"] == 150
    assert list(iter_conversations(artifacts_service.local_path(
        _uri(artifact)))) and _estimate(caller, "evaluation", spec, dry_run=False)["examples"] == 10


def _uri(artifact_id: str) -> str:
    with session_scope() as session:
        return session.get(Artifact, artifact_id).uri  # type: ignore[union-attr]


def test_test_jobs_have_no_estimate() -> None:
    with session_scope() as session:
        assert estimates.estimate(session, _team(), "test", object(), Settings()) is None


def test_an_unreadable_artifact_gives_a_note_not_an_error() -> None:
    caller = _team()
    artifact = _artifact(caller, conversations(8), made_by={"train_on": "all_assistant"})
    artifacts_service.local_path(_uri(artifact)).write_bytes(b'{"messages": [}\nnot json\n')
    out = _estimate(caller, "training", TrainingSpec.model_validate({"train_artifact": artifact}))
    assert out["basis"] == "dataset_stats" and out["exact"] is False and out["examples"] == 8  # the row's figures
    assert any("could not be read" in n for n in out["notes"])
