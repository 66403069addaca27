"""What a job would do, before it runs: examples, tokens, steps, cost and duration (docs/architecture.md,
"Estimates"). Used by dry runs (`POST /v1/jobs?dry_run=true`, and per step of a pipeline's) and recorded on every
created job (`job.estimate`).

Every estimate has the same core, so a pipeline can add its steps up:
`{"exact": bool, "cost_usd": float | None, "duration_seconds": float | None, "notes": [str, ...]}` plus fields of
its kind. `exact: true` means the figures are what the job will do, not an approximation (a price or a throughput
from settings still only prices them); null means "not known before the job runs", and a note says why.

Training. The rule that decides which rows a run trains on and what it sends lives in app/chat/fit.py, shared
with the training job itself, so the counts cannot drift apart. Two depths, by design:
- a **dry run** renders every row of the train artifact with the run's renderer options and max_length (up to
  `TUNEQ_ESTIMATE_SCAN_MAX_BYTES`) and replays the run's batch order: examples, tokens per epoch, steps and the
  tokens of every datum the run will send are then exact (`exact: true`). Someone who asks is willing to wait
  for that;
- a **created job** must not pay for tokenizing its whole dataset at submit (the submit path is hot, and the
  worker makes that pass anyway when it starts), so it records an estimate from the artifact's row: the dataset
  job's token statistics (`meta`: tokens, trained tokens, the longest row), which are the same counts when the
  dataset job rendered with the same `train_on` / `enable_thinking` and no row is over max_length; `exact` stays
  false (a row with nothing to train would still be dropped), and without statistics only rows and steps are known.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.chat.fit import Fit, fit, fit_file, iter_conversations, no_fit_message, run_tokens, schedule
from app.models import Artifact, Job
from app.schemas.common import OutputRef
from app.services import artifacts as artifacts_service
from app.services.auth import Caller
from app.settings import Settings


def estimate(session: Session, caller: Caller, kind: str, spec: Any, settings: Settings, *,
             dry_run: bool = False) -> dict[str, Any] | None:
    """The estimate for a validated spec (fields holding an OutputRef are not known yet), or None (test jobs).
    `dry_run` allows the slower, exact counts (see the module docstring)."""
    if kind == "training":
        return training(session, caller, spec, settings, dry_run=dry_run)
    if kind == "evaluation":
        return evaluation(session, caller, spec, settings, dry_run=dry_run)
    if kind == "export":
        return base(notes=["An export trains nothing: it loads the checkpoint's state and downloads its weights; "
                           "no cost is estimated for it."])
    if kind in ("generation", "dataset"):
        from app.services import estimates_data

        if kind == "generation":
            return estimates_data.generation(session, caller, spec, settings, dry_run=dry_run)
        return estimates_data.dataset(session, caller, spec, settings, dry_run=dry_run)
    return None


def base(exact: bool = False, **fields: Any) -> dict[str, Any]:
    return {"exact": exact, "cost_usd": None, "duration_seconds": None, "notes": [], **fields}


def not_yet(field: str, ref: OutputRef) -> str:
    return f"spec.{field} is {ref.ref}, an output not made yet: its size is known when that job has run."


def artifact_info(session: Session, caller: Caller, artifact_id: str) -> Any:
    """The artifact's row (rows, bytes, format, uri, meta) and the spec of the job that made it, in one query;
    None if it is not the team's (the submit's checks already said so)."""
    return session.execute(
        select(Artifact.rows, Artifact.bytes, Artifact.format, Artifact.uri, Artifact.meta, Job.kind, Job.spec)
        .outerjoin(Job, Job.id == Artifact.job_id)
        .where(Artifact.id == artifact_id, Artifact.team_id == caller.team_id)).first()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


# ---- training ---------------------------------------------------------------------------------------------------


def training(session: Session, caller: Caller, spec: Any, settings: Settings, *, dry_run: bool) -> dict[str, Any]:
    if isinstance(spec.train_artifact, OutputRef):
        out = base(examples=None, tokens_per_epoch=None, trained_tokens_per_epoch=None, tokens=None,
                   trained_tokens=None, total_steps=spec.max_steps if spec.epochs is None else None)
        out["notes"].append(not_yet("train_artifact", spec.train_artifact))
        return _price_training(out, spec, settings)
    info = artifact_info(session, caller, spec.train_artifact)
    if info is None:
        return base(notes=["spec.train_artifact: not found"])
    fitted = None
    if dry_run and (info.bytes or 0) <= settings.estimate_scan_max_bytes:
        fitted = _scan(artifacts_service.local_path(info.uri), spec)
    if fitted is not None:
        out = _from_fit(spec, fitted)
    else:
        out = _from_stats(spec, info)
        if dry_run and (info.bytes or 0) > settings.estimate_scan_max_bytes:
            out["notes"].append(f"The train artifact is over TUNEQ_ESTIMATE_SCAN_MAX_BYTES "
                                f"({settings.estimate_scan_max_bytes} bytes), so it was not rendered row by row.")
        elif dry_run:
            out["notes"].append("The train artifact could not be read row by row here; the job will say why "
                                "if it cannot either.")
    if isinstance(spec.validation_artifact, str):
        val = artifact_info(session, caller, spec.validation_artifact)
        out["validation_rows"] = val.rows if val is not None else None
    return _price_training(out, spec, settings)


def _scan(path: Any, spec: Any) -> Fit | None:
    """Every row rendered by the run's rule; None when the file cannot be read as ChatML JSONL (the job itself
    reports that, as a job error: an estimate never turns it into a 500)."""
    try:
        return fit_file(path, max_length=spec.max_length, train_on=spec.train_on,
                        enable_thinking=spec.enable_thinking, per_row=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _from_fit(spec: Any, fitted: Fit) -> dict[str, Any]:
    """Exact: the rows the run keeps, its schedule and every datum it sends, by the run's own rules."""
    n = fitted.examples
    out = base(True, basis="rendered", rows=fitted.total, examples=n, dropped=fitted.total - n,
               tokens_per_epoch=fitted.tokens, trained_tokens_per_epoch=fitted.trained_tokens)
    if n == 0:
        out.update(exact=True, steps_per_epoch=0, total_steps=0, batch_size=0, tokens=0, trained_tokens=0)
        out["notes"].append("The job would fail: " + no_fit_message("training", spec.max_length, fitted.shortest))
        return out
    sched = schedule(n, batch_size=spec.batch_size, epochs=spec.epochs, max_steps=spec.max_steps)
    tokens, trained, exact = run_tokens(fitted, spec.seed, sched)
    out.update(exact=exact, steps_per_epoch=sched.steps_per_epoch, total_steps=sched.total_steps,
               batch_size=sched.batch_size, tokens=tokens, trained_tokens=trained)
    if out["dropped"]:
        out["notes"].append(f"{out['dropped']} of {fitted.total} rows are over max_length={spec.max_length} "
                            "tokens or have nothing to train, and are skipped.")
    if not exact:
        out["notes"].append("Too many partial epochs to replay: the rows left out of each epoch's last batch "
                            "are counted at the mean row length.")
    return out


def _from_stats(spec: Any, info: Any) -> dict[str, Any]:
    """From the artifact's row: the dataset job's token statistics when they were counted the same way."""
    rows = info.rows or 0
    meta = info.meta or {}
    made_by = info.spec or {}
    longest = (meta.get("token_distribution") or {}).get("max")
    same_render = (info.kind == "dataset" and made_by.get("train_on", "all_assistant") == spec.train_on
                   and made_by.get("enable_thinking", True) == spec.enable_thinking)
    out = base(False, basis="rows", rows=info.rows, examples=info.rows, tokens_per_epoch=None,
               trained_tokens_per_epoch=None, tokens=None, trained_tokens=None)
    if rows and same_render and longest is not None and "tokens" in meta and longest <= spec.max_length:
        out.update(basis="dataset_stats", tokens_per_epoch=meta["tokens"],
                   trained_tokens_per_epoch=meta.get("trainable_tokens"))
        out["notes"].append("Token counts are the dataset job's (same renderer options, every row within "
                            "max_length); a dry run renders every row and gives exact figures.")
    else:
        out["notes"].append("Token counts are not known before the job renders the rows: the dataset job's "
                            "statistics were counted with other options (or not at all), or some rows may be "
                            "over max_length. A dry run (?dry_run=true) counts them exactly.")
    if rows:
        sched = schedule(rows, batch_size=spec.batch_size, epochs=spec.epochs, max_steps=spec.max_steps)
        out.update(steps_per_epoch=sched.steps_per_epoch, total_steps=sched.total_steps,
                   batch_size=sched.batch_size)
        if out["tokens_per_epoch"] is not None:
            used = sched.total_steps * sched.batch_size  # rows sent over the run; each datum is n - 1 tokens
            out["tokens"] = round((out["tokens_per_epoch"] - rows) / rows * used)
            if out["trained_tokens_per_epoch"] is not None:
                out["trained_tokens"] = round(out["trained_tokens_per_epoch"] / rows * used)
    return out


def _price_training(out: dict[str, Any], spec: Any, settings: Settings) -> dict[str, Any]:
    tokens = out.get("tokens")
    price = settings.training_price_per_mtok.get(spec.base_model)
    speed = settings.training_tokens_per_second.get(spec.base_model)
    out["price_per_mtok"] = price
    if price is None:
        out["notes"].append(f"No training price for {spec.base_model} (TUNEQ_TRAINING_PRICE_PER_MTOK): "
                            "cost_usd is null.")
    elif tokens is not None:
        out["cost_usd"] = _round(tokens * price / 1e6)
    if speed is None:
        out["notes"].append(f"No throughput for {spec.base_model} (TUNEQ_TRAINING_TOKENS_PER_SECOND): "
                            "duration_seconds is null.")
    elif tokens is not None and speed > 0:
        out["duration_seconds"] = round(tokens / speed, 1)
    if out.get("validation_rows"):
        out["notes"].append("Validation passes (eval_every) are not in the cost or the duration.")
    return out


# ---- evaluation -------------------------------------------------------------------------------------------------


def evaluation(session: Session, caller: Caller, spec: Any, settings: Settings, *, dry_run: bool
               ) -> dict[str, Any]:
    models = int(spec.include_base) + len(spec.checkpoints) + (spec.training_job is not None)
    out = base(False, models=models, examples=None, scored_tokens=None,
               sampled_replies=None, max_sampled_tokens=None)
    out["notes"].append("Evaluation has no price table: cost_usd is null.")
    if isinstance(spec.eval_artifact, OutputRef):
        out["notes"].append(not_yet("eval_artifact", spec.eval_artifact))
        return out
    info = artifact_info(session, caller, spec.eval_artifact)
    if info is None:
        return out
    considered = min(spec.max_examples, info.rows) if info.rows is not None else spec.max_examples
    out["examples"] = considered
    if dry_run:  # the first max_examples (≤ 10,000) rows, by evaluation's rule: fits, with tokens to score
        rows = iter_conversations(artifacts_service.local_path(info.uri))
        first = (row for _, row in zip(range(spec.max_examples), rows, strict=False))
        try:
            fitted = fit(first, max_length=spec.max_length, train_on=spec.train_on,
                         enable_thinking=spec.enable_thinking)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            out["notes"].append("The eval artifact could not be read row by row here.")
            return out
        out.update(exact=True, examples=fitted.examples, scored_tokens=fitted.trained_tokens * models,
                   skipped=fitted.total - fitted.examples)
        considered = fitted.examples
    else:
        out["notes"].append("Scored tokens are counted by a dry run (?dry_run=true).")
    out["sampled_replies"] = min(spec.samples, considered) * models
    out["max_sampled_tokens"] = out["sampled_replies"] * spec.max_tokens
    return out
