"""Shared request types with their bounds, documented once (every bound shows in the OpenAPI descriptions).

Why bounds everywhere: a value the database cannot store (an integer past 64 bits, a NUL character in text)
must be a 422 naming the field, never a 5xx after the fact; and no single request may ask for unbounded work.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer, model_validator

INT64_MAX = 2**63 - 1
MAX_STEPS = 10_000_000  # step counts (warmup, save/eval intervals, max_steps)
MAX_ROWS = 100_000_000  # row counts (validation rows, max examples)
VARS_MAX_DEPTH = 8
VARS_MAX_BYTES = 65_536

Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="random seed, 0 ≤ seed ≤ 4,294,967,295")]
StepCount = Annotated[int, Field(ge=0, le=MAX_STEPS, description=f"0 ≤ steps ≤ {MAX_STEPS:,}")]
RowCount = Annotated[int, Field(ge=1, le=MAX_ROWS, description=f"1 ≤ rows ≤ {MAX_ROWS:,}")]
Name = Annotated[str, Field(min_length=1, max_length=200, description="at most 200 characters")]
Ref = Annotated[str, Field(min_length=1, max_length=500, description="an id or path, at most 500 characters")]
REF_PATTERN = r"^[A-Za-z0-9_-]{1,64}\.[a-z_]{1,64}$"


class OutputRef(BaseModel):
    """`{"$ref": "STEP.OUTPUT"}`: an output of an earlier pipeline step (or, in a plain job, of a job named in
    `depends_on`), filled in when this job is released (docs/architecture.md, "Multi-step pipelines")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    ref: str = Field(alias="$ref", pattern=REF_PATTERN, examples=["data.train_artifact"],
                     description="STEP.OUTPUT: a step name (or job id) and one of its outputs")

    @model_serializer
    def _as_json(self) -> dict[str, str]:
        return {"$ref": self.ref}


WebhookUrl = Annotated[str, Field(min_length=8, max_length=2048, pattern=r"^https?://[^\s]+$",
                                  description="an http(s) URL, at most 2048 characters")]

# A field that names an earlier job's output: an id, or a reference resolved when the job is released.
RefOrOutput = Ref | OutputRef


def plain(value: str | OutputRef) -> str:
    """A RefOrOutput field as a worker reads it: a released job's references are all filled in."""
    if isinstance(value, OutputRef):
        raise ValueError(f"the reference {value.ref} was not filled in before the job ran")
    return value


def control_characters(text: str) -> bool:
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def _no_control(text: str) -> str:
    if control_characters(text):
        raise ValueError("must not contain control characters (NUL, newline, tab, …)")
    return text


PlainText = Annotated[str, AfterValidator(_no_control)]
Label = Annotated[str, Field(min_length=1, max_length=200, description="1–200 characters, no control characters"),
                  AfterValidator(_no_control)]


def _nul_path(value: Any, path: str, depth: int = 0) -> str | None:
    """The path of the first text holding a NUL character (PostgreSQL cannot store one), or None."""
    if depth > 64:
        return None  # deeper input is refused by its own field's bounds
    if isinstance(value, str):
        return path or "value" if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return where
            found = _nul_path(item, where, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _nul_path(item, f"{path}[{i}]", depth + 1)
            if found:
                return found
    return None


class StrictModel(BaseModel):
    """Unknown fields are an error, so a typo is reported instead of silently ignored. No text may hold a NUL
    character (PostgreSQL cannot store one)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        found = _nul_path(data, "")
        if found:
            raise ValueError(f"{found}: text must not contain NUL characters (\\u0000)")
        return data


def _check_vars(value: dict[str, Any]) -> dict[str, Any]:
    """Template variables: JSON of bounded depth and size, integers within 64 bits."""
    stack: list[tuple[Any, str, int]] = [(value, "vars", 1)]
    while stack:
        item, path, depth = stack.pop()
        if depth > VARS_MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {VARS_MAX_DEPTH} levels")
        if isinstance(item, bool) or item is None or isinstance(item, (str, float)):
            continue
        if isinstance(item, int):
            if not -(2**63) <= item <= INT64_MAX:
                raise ValueError(f"{path}: integers must fit in 64 bits (±9,223,372,036,854,775,807)")
        elif isinstance(item, dict):
            stack.extend((v, f"{path}.{k}", depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
    size = len(json.dumps(value, ensure_ascii=False).encode())
    if size > VARS_MAX_BYTES:
        raise ValueError(f"vars: {size:,} bytes as JSON, more than {VARS_MAX_BYTES:,}")
    return value


TemplateVars = Annotated[
    dict[str, Any],
    Field(description=f"JSON values your template sees; nested at most {VARS_MAX_DEPTH} levels, at most "
                      f"{VARS_MAX_BYTES:,} bytes as JSON, integers within 64 bits"),
    AfterValidator(_check_vars),
]


# ---- query parameters --------------------------------------------------------------------------------------

JOB_CURSOR = re.compile(r"[a-z]{1,20}_[0-9a-f]{1,64}")  # a job id (time-ordered; see app.models.new_id)
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def clamp_utc(value: datetime) -> datetime:
    """A time filter as an aware UTC time within the years a row can have: a time without a zone is UTC, and a
    time whose conversion to UTC leaves the calendar (0001-01-01T00:00+01:00) is clamped, not an error."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        return _EARLIEST if value.year < 5000 else _LATEST
    return min(max(value, _EARLIEST), _LATEST)
