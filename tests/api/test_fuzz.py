"""Property-based fuzzing of every operation in /openapi.json (schemathesis) against the live API: valid and
invalid inputs, authenticated as a real team, aimed at that team's real objects as often as at random ids.
Whatever it sends, the API answers with a 4xx problem or a success, never a server error.

Derandomized (the same cases on every run), so a failure reproduces; run alone with `pytest -m fuzz`."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.api.team_objects import TeamObjects, make_team_objects
from tests.isolated import isolated_stack
from tests.support import Stack

pytestmark = pytest.mark.fuzz

# Per operation and generation mode; the whole run stays well under two minutes. A deeper hunt:
# TUNEQ_FUZZ_EXAMPLES=500 pytest -m fuzz
EXAMPLES_PER_OPERATION = int(os.environ.get("TUNEQ_FUZZ_EXAMPLES", "25"))
MIN_OPERATIONS = 15


@pytest.fixture(scope="module")
def fuzz_target(backend: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Stack, httpx.Client, TeamObjects]]:
    """An API of its own (tests/isolated.py) and a team with one of every object. Its worker stops before the
    fuzzing: the jobs the fuzzer makes (some would sleep for minutes) stay queued, hogging no worker."""
    with isolated_stack(tmp_path_factory.mktemp("fuzz"), "fuzz", {}) as own:
        own.stack.start_worker()
        plain = own.create_key(rate_limit="100000/second")  # TUNEQ_RATE_LIMIT would answer most cases 429
        with httpx.Client(base_url=own.stack.base_url, headers={"Authorization": f"Bearer {plain}"},
                          timeout=30) as client:
            objects = make_team_objects(client)
            own.stack.stop_workers()
            # Not the failed job: a fuzzed resume would queue it again, and a fuzzed /wait on it would wait.
            del objects.jobs["test_failed"]
            yield own.stack, client, objects


def _real_ids(objects: TeamObjects) -> dict[str, Any]:
    """For each id-taking field of a job body (by name), a real object of the team that fits it."""
    state = objects.checkpoints.get("state", {}).get("id")
    sampler = objects.checkpoints.get("sampler", {}).get("id")
    return {
        "artifact_id": objects.artifacts["upload"], "source_artifact": objects.artifacts["train"],
        "train_artifact": objects.artifacts["train"], "validation_artifact": objects.artifacts["validation"],
        "eval_artifact": objects.artifacts["validation"], "from_checkpoint": state,
        "checkpoints": [sampler] if sampler else [], "training_job": objects.jobs.get("training"),
        "depends_on": [objects.jobs["test"]],
    }


def _aim_body(value: Any, ids: dict[str, Any]) -> Any:
    """`value` with every id-taking field (at any depth) replaced by one of the team's real objects, so the
    fuzzer gets past "no such artifact" into the rest of the validation."""
    if isinstance(value, list):
        return [_aim_body(v, ids) for v in value]
    if not isinstance(value, dict):
        return value
    return {k: ids[k] if k in ids and ids[k] is not None and isinstance(v, str | list) else _aim_body(v, ids)
            for k, v in value.items()}


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _describe(case: Any, status: int | str, body: str) -> str:
    return (f"{case.method} {case.path} path={case.path_parameters} query={_short(case.query)} "
            f"headers={_short(case.headers)} body={_short(case.body)} -> {status} {body[:300]}")


def _fuzz(stack: Stack, client: httpx.Client, objects: TeamObjects) -> tuple[int, list[str], list[str]]:
    """(operations fuzzed, server errors, response-schema mismatches), printing the statuses seen."""
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")
    auth = {"Authorization": client.headers["authorization"]}
    checkpoints = [c["id"] for c in objects.checkpoints.values()]
    real = {"job_id": list(objects.jobs.values()), "artifact_id": list(objects.artifacts.values()),
            "checkpoint_id": checkpoints, "ref": ["Qwen/Qwen3-8B", *checkpoints]}  # chat: a base model too
    ids = _real_ids(objects)
    server_errors: list[str] = []
    nonconforming: Counter[str] = Counter()
    statuses: defaultdict[str, Counter[int]] = defaultdict(Counter)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), pick=st.integers(0, 5))
            def run(case: Any, pick: int) -> None:
                for name in list(case.path_parameters or {}):
                    pool = real.get(name, [])
                    if pick < len(pool):  # most cases aim at a real object of the team
                        case.path_parameters[name] = pool[pick]
                if pick < 4 and isinstance(case.body, dict):  # and most job bodies name real objects
                    case.body = _aim_body(case.body, ids)
                # Always the real key: schemathesis makes up bearer tokens (bearerAuth), but bad keys count
                # against the per-address lookup limit other tests share (401s are tested elsewhere).
                case.headers = {**(case.headers or {}), **auth}
                try:
                    response = case.call(base_url=stack.base_url, timeout=60)
                except (UnicodeError, ValueError) as exc:  # the client itself refused to send it
                    if "header" in str(exc).lower() or isinstance(exc, UnicodeError):
                        return
                    raise
                except Exception as exc:  # the server dropped the connection: as bad as a 500
                    server_errors.append(_describe(case, type(exc).__name__, str(exc)))
                    return
                statuses[f"{case.method} {case.path}"][response.status_code] += 1
                if response.status_code >= 500:
                    server_errors.append(_describe(case, response.status_code, response.text))
                    return
                try:
                    case.validate_response(response, checks=[response_schema_conformance])
                except Exception as exc:
                    nonconforming[f"{case.method} {case.path} {response.status_code}: {str(exc).splitlines()[0]}"] += 1

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode == GenerationMode.NEGATIVE, operation.label
    for operation_name, seen in sorted(statuses.items()):
        print(f"fuzz: {operation_name}: {dict(sorted(seen.items()))}")
    return len(operations), server_errors, [f"{k} (x{n})" for k, n in nonconforming.items()]


def test_no_input_makes_a_server_error(fuzz_target: tuple[Stack, httpx.Client, TeamObjects]) -> None:
    stack, client, objects = fuzz_target
    count, server_errors, nonconforming = _fuzz(stack, client, objects)
    assert count >= MIN_OPERATIONS, f"only {count} operations in /openapi.json"
    assert server_errors == [], "\n".join(server_errors)
    assert nonconforming == [], "responses that do not match their declared schema:\n" + "\n".join(nonconforming)
