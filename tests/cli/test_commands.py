"""The teammates' `tuneq` command against a real API and worker: what a person sees, and the exit codes
scripts rely on (0 ok, 1 the job failed or was cancelled, 2 usage or a 4xx, 3 unreachable)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import Tuneq
from tests.support import free_port, wait_until


def _submit(tuneq: Tuneq, tmp_path: Path, spec: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(spec)
    result = tuneq("submit", str(path), "--json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["id"])


def test_submit_yaml_then_watch_shows_progress_and_success(tuneq: Tuneq, tmp_path: Path) -> None:
    job_id = _submit(tuneq, tmp_path, "kind: test\nlabels: {team: cli}\nspec:\n  steps: 3\n  step_seconds: 0.05\n")

    watched = tuneq("jobs", "watch", job_id)

    assert watched.exit_code == 0, watched.output
    assert "3/3 steps" in watched.stdout and "━" in watched.stdout  # the final frame of the progress bar
    assert f"job {job_id} succeeded" in watched.stdout
    listed = tuneq("jobs", "ls", "--label", "team:cli")
    assert job_id in listed.stdout and "succeeded" in listed.stdout
    shown = json.loads(tuneq("jobs", "show", job_id, "--json").stdout)
    assert shown["status"] == "succeeded" and shown["labels"] == {"team": "cli"}


def test_dry_run_prints_the_estimate_and_submits_nothing(tuneq: Tuneq, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                                     {"role": "assistant", "content": f"{2 * i}."}]}) + "\n"
                            for i in range(12)))
    file_id = json.loads(tuneq("files", "upload", str(data), "--json").stdout)["id"]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"kind": "dataset", "spec": {"source": {"type": "artifact", "artifact_id": file_id}}}))

    shown = tuneq("submit", str(path), "--dry-run")
    as_json = tuneq("submit", str(path), "--dry-run", "--json")

    assert shown.exit_code == 0, shown.output
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert ["rows", "12"] in lines and any(line[:1] == ["tokens"] for line in lines)
    assert json.loads(as_json.stdout)["estimate"]["rows"] == 12
    assert json.loads(tuneq("jobs", "ls", "--json").stdout)["data"] == []


def test_watch_a_failed_job_prints_its_error_and_exits_1(tuneq: Tuneq, tmp_path: Path) -> None:
    job_id = _submit(tuneq, tmp_path, "kind: test\nspec: {steps: 1, fail_with: 'the tokenizer is missing'}\n")

    watched = tuneq("jobs", "watch", job_id)
    as_events = tuneq("jobs", "watch", job_id, "--json")

    assert watched.exit_code == 1
    assert f"job {job_id} failed: " in watched.stdout and "the tokenizer is missing" in watched.stdout
    events = [json.loads(line) for line in as_events.stdout.splitlines()]
    assert as_events.exit_code == 1 and events[-1]["type"] == "failed"
    assert events[-1]["data"]["error"]["message"] == "the tokenizer is missing"


def test_cancel_a_running_job_then_watch_exits_1(tuneq: Tuneq, client: httpx.Client, tmp_path: Path) -> None:
    job_id = _submit(tuneq, tmp_path, "kind: test\nspec: {steps: 200, step_seconds: 0.05}\n")
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "running", 30, "the job to start")

    cancelled = tuneq("jobs", "cancel", job_id)
    watched = tuneq("jobs", "watch", job_id)

    assert cancelled.exit_code == 0 and "cancel requested" in cancelled.stdout
    assert watched.exit_code == 1 and f"job {job_id} cancelled" in watched.stdout


def test_upload_then_download_gives_back_the_same_bytes(tuneq: Tuneq, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(50))
                    + json.dumps({"prompt": "[INST] hi [/INST]", "completion": "[bold]x[/]"}) + "\n")  # data, not markup

    uploaded = tuneq("files", "upload", str(data), "--label", "stage:1", "--json")
    file_id = json.loads(uploaded.stdout)["id"]
    listed = tuneq("files", "ls", "--label", "stage:1")
    out = tmp_path / "out"
    out.mkdir()
    downloaded = tuneq("artifacts", "download", file_id, str(out / "copy.jsonl"))
    preview = json.loads(tuneq("artifacts", "preview", file_id, "--rows", "2", "--json").stdout)
    table = tuneq("artifacts", "preview", file_id, "--rows", "51")

    assert uploaded.exit_code == 0, uploaded.output
    assert file_id in listed.stdout
    assert downloaded.exit_code == 0, downloaded.output
    assert (out / "copy.jsonl").read_bytes() == data.read_bytes()
    assert [row["prompt"] for row in preview["rows"]] == ["q0", "q1"]
    assert table.exit_code == 0 and "[INST] hi [/INST]" in table.stdout and "[bold]x[/]" in table.stdout, table.output


def test_a_wrong_key_exits_2_with_the_services_message(tuneq: Tuneq, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEQ_API_KEY", "tq_not_a_real_key")

    result = tuneq("jobs", "ls")

    assert result.exit_code == 2
    assert "error 401" in result.stderr and "key" in result.stderr.lower()


def test_an_invalid_spec_exits_2_naming_the_field(tuneq: Tuneq, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("kind: test\nspec: {steps: -1}\n")

    result = tuneq("submit", str(path))

    assert result.exit_code == 2
    assert "error 422" in result.stderr and "steps" in result.stderr


def test_a_stopped_service_exits_3(tuneq: Tuneq, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEQ_URL", f"http://127.0.0.1:{free_port()}")

    result = tuneq("jobs", "ls")

    assert result.exit_code == 3
    assert "could not reach" in result.stderr


def test_login_saves_a_file_only_its_owner_can_read(config_home: Path, api_key: str,
                                                    client: httpx.Client) -> None:
    tuneq = Tuneq()
    url = str(client.base_url).rstrip("/")

    saved = tuneq("login", "--url", url, "--api-key", api_key)
    listed = tuneq("jobs", "ls", "--json")

    path = config_home / "tuneq" / "config.json"
    assert saved.exit_code == 0 and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert listed.exit_code == 0 and json.loads(listed.stdout)["data"] == []


def test_without_a_login_commands_say_how_to_log_in(config_home: Path) -> None:
    result = Tuneq()("jobs", "ls")

    assert result.exit_code == 2 and "tuneq login" in result.stderr


def test_chat_answers_turn_by_turn_until_an_empty_line(tuneq: Tuneq) -> None:
    result = tuneq("chat", "Qwen/Qwen3-8B", "--max-tokens", "8", "--system", "Answer briefly.",
                   input="What is 2 plus 2?\nAnd 3 plus 3?\n\n")

    assert result.exit_code == 0, result.output
    assert result.stdout.count("Qwen/Qwen3-8B> ") == 2


def test_chat_with_an_unknown_model_exits_2_naming_the_known_ones(tuneq: Tuneq) -> None:
    result = tuneq("chat", "Qwen/Qwen9-1T", input="hi\n")

    assert result.exit_code == 2 and "error 404" in result.stderr and "Qwen/Qwen3-8B" in result.stderr
