"""Output references: `{"$ref": "STEP.OUTPUT"}` in a spec, filled in when the job is released
(docs/architecture.md, "Multi-step pipelines").

At submit a reference names a pipeline step or a job of the team; it is stored as `{"$ref": "JOB_ID.OUTPUT"}` and
the job waits on JOB_ID (`job_dependency`). When every dependency has succeeded, `resolve` replaces each reference
with the value in that job's result, so a worker only ever sees plain ids and paths.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from app.models import Job

# What each kind of job produces (keys of its `result`; `id` is the job itself).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "dataset": ("id", "train_artifact", "validation_artifact"),
    "generation": ("id", "train_artifact", "artifact"),
    "training": ("id", "sampler_path", "state_path"),
    "evaluation": ("id",),
    "export": ("id", "adapter_path"),
    "test": ("id",),
}


@dataclass(frozen=True)
class Reference:
    path: tuple[str | int, ...]  # where it sits in the spec
    source: str  # a step name or a job id
    output: str

    @property
    def field(self) -> str:
        text = "spec"
        for part in self.path:
            text += f"[{part}]" if isinstance(part, int) else f".{part}"
        return text


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("$ref"), str)


def find(spec: Any, path: tuple[str | int, ...] = ()) -> Iterator[Reference]:
    """Every reference in a spec (as JSON), in document order."""
    if _is_ref(spec):
        source, _, output = spec["$ref"].partition(".")
        yield Reference(path, source, output)
    elif isinstance(spec, dict):
        for key, value in spec.items():
            yield from find(value, (*path, key))
    elif isinstance(spec, list):
        for i, value in enumerate(spec):
            yield from find(value, (*path, i))


def _replace(spec: Any, path: tuple[str | int, ...], value: Any) -> None:
    target = spec
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def retarget(spec: dict[str, Any], job_ids: Mapping[str, str]) -> None:
    """Rewrite step names to the job ids they became (in place)."""
    for ref in list(find(spec)):
        if ref.source in job_ids:
            _replace(spec, ref.path, {"$ref": f"{job_ids[ref.source]}.{ref.output}"})


def problem(ref: Reference, kind: str | None, *, what: str = "step") -> str | None:
    """Why `ref` cannot work against a `what` of this kind (None if it can)."""
    if kind is None:
        return f"{ref.field}: no {what} '{ref.source}' to take '{ref.output}' from"
    outputs = OUTPUTS.get(kind, ("id",))
    if ref.output not in outputs:
        return (f"{ref.field}: a {kind} job has no output '{ref.output}'; it has "
                f"{', '.join(outputs)}")
    return None


def output_of(job_id: str, result: Mapping[str, Any] | None, output: str) -> Any:
    return job_id if output == "id" else (result or {}).get(output)


def resolve(db: Any, spec: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The spec with every reference filled in from its job's result, or (spec, why) when an output is missing
    (e.g. a dataset job made no validation split) — the job then fails with that message."""
    refs = list(find(spec))
    if not refs:
        return spec, None
    rows = db.execute(select(Job.id, Job.result, Job.pipeline_step)
                      .where(Job.id.in_({r.source for r in refs}))).all()
    found = {row.id: row for row in rows}
    resolved = _copy(spec)
    for ref in refs:
        row = found.get(ref.source)
        value = output_of(ref.source, row.result if row else None, ref.output)
        if value is None:
            name = f"step '{row.pipeline_step}'" if row is not None and row.pipeline_step else f"job {ref.source}"
            return spec, (f"{ref.field}: {name} produced no '{ref.output}' (its result has none), so this job "
                          "has no input there; change the step that makes it, or drop the reference.")
        _replace(resolved, ref.path, value)
    return resolved, None


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
