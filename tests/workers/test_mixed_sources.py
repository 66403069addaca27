"""Mixed dataset sources, run in this process through the real pipeline (real SQL claim, real readers, real
artifacts): weights, provenance side files, `max_examples` that stops reading, truncation, cross-source dedupe."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from app.db import run_statement, session_scope
from app.models import Artifact, Job
from app.schemas.datasets import DatasetSpec
from app.services import artifacts as artifacts_service
from app.services import auth, transitions
from app.settings import get_settings
from workers.errors import JobFailed
from workers.lease import JobContext
from workers.pipelines import dataset
from workers.pipelines.mixing import weighted_counts


def conv(tag: str, turns: int = 1, words: int = 3) -> list[dict[str, str]]:
    out = []
    for t in range(turns):
        out += [{"role": "user", "content": f"{tag} question {t}: " + "lorem " * words},
                {"role": "assistant", "content": f"{tag} answer {t}: " + "ipsum " * words}]
    return out


class Team:
    """A team with uploads in the artifact store, and dataset jobs driven in this process."""

    def __init__(self) -> None:
        with session_scope() as session:
            self.id = auth.get_or_create_team(session, f"mix-{uuid.uuid4().hex[:8]}").id

    def upload(self, name: str, data: bytes, fmt: str = "jsonl") -> str:
        uri = f"{self.id}/up-{uuid.uuid4().hex[:8]}/upload.{fmt}"
        path = artifacts_service.local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        with session_scope() as session:
            art = Artifact(team_id=self.id, kind="upload", name=name, uri=uri, format=fmt)
            session.add(art)
            session.flush()
            return art.id

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        with session_scope() as session:
            job = Job(team_id=self.id, kind="dataset", status="queued", spec=spec, event_seq=0)
            session.add(job)
            session.flush()
            job_id = job.id
        claim = run_statement(lambda db: transitions.claim(db, job_id, owner="test", lease_seconds=30))
        assert claim is not None
        return dataset.run(spec, JobContext(claim, get_settings()))

    def lines(self, artifact_id: str) -> list[dict[str, Any]]:
        with session_scope() as session:
            path, _ = artifacts_service.path_of(session, team_id=self.id, artifact_id=artifact_id)
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def jsonl(rows: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


@pytest.fixture
def team(backend: dict[str, str]) -> Team:
    return Team()


def test_weights_give_each_source_its_share_of_what_the_scarcest_allows() -> None:
    assert weighted_counts([100, 100, 100], [1, 1, 2], None) == [50, 50, 100]
    assert weighted_counts([100, 100, 100], [1, 1, 2], 10) == [3, 2, 5]  # largest remainder, first on ties
    assert weighted_counts([10, 1000], [1, 1], None) == [10, 10]
    assert weighted_counts([7, 7, 7], [0.5, 0.25, 0.25], None) == [7, 4, 3]
    assert sum(weighted_counts([999, 5, 80], [3, 0.1, 1], 50)) == 50


def test_spec_takes_one_of_source_and_sources_and_names_sources() -> None:
    one = {"type": "artifact", "artifact_id": "art_1"}
    with pytest.raises(ValidationError, match="exactly one of `source`"):
        DatasetSpec.model_validate({"source": one, "sources": [one]})
    with pytest.raises(ValidationError, match="exactly one of `source`"):
        DatasetSpec.model_validate({})
    with pytest.raises(ValidationError, match=r"sources\[1\].weight: give a weight to every source or to none"):
        DatasetSpec.model_validate({"sources": [{**one, "weight": 1}, one]})
    with pytest.raises(ValidationError, match=r"sources\[1\].alias: 'a' is already"):
        DatasetSpec.model_validate({"sources": [{**one, "alias": "a"}, {**one, "alias": "a"}]})
    with pytest.raises(ValidationError, match="truncate: set max_tokens"):
        DatasetSpec.model_validate({"source": one, "truncate": True})
    spec = DatasetSpec.model_validate({"sources": [
        one, one, {"type": "hub", "name": "org/chat"}, {"type": "local", "path": "a/b/chat"},
        {"type": "artifact", "artifact_id": {"$ref": "gen.train_artifact"}}, {**one, "alias": "art_1-2"}]})
    assert [s.alias for s in spec.sources or []] == ["art_1", "art_1-3", "chat", "chat-2", "gen", "art_1-2"]
    assert spec.model_dump(mode="json")["sources"][1]["alias"] == "art_1-3"  # stored with the job


def test_max_examples_stops_reading_a_million_row_source(team: Team) -> None:
    data = b"".join(b'{"question":"q%d","answer":"a%d"}\n' % (i, i) for i in range(1_000_000))
    big = team.upload("big.jsonl", data)
    result = team.run({"source": {"type": "artifact", "artifact_id": big}, "max_examples": 100})
    assert result["rows_out"] == 100
    assert result["rows_in"] <= 2_000  # what the reader yielded: a few batches, not the million rows

    small = team.upload("small.jsonl", jsonl([{"messages": conv(f"s{i}")} for i in range(50)]))
    mixed = team.run({"sources": [{"type": "artifact", "artifact_id": big, "max_examples": 30},
                                  {"type": "artifact", "artifact_id": small, "alias": "small"}]})
    assert [s["rows_out"] for s in mixed["sources"]] == [30, 50]
    assert mixed["sources"][0]["rows_in"] <= 2_000


def test_three_sources_mix_by_weight_with_provenance(team: Team) -> None:
    chat = [{"messages": conv(f"chat{i}")} for i in range(60)]
    alpaca = [{"instruction": f"do {i}", "input": "", "output": f"done {i}"} for i in range(60)]
    qa = "question,answer\n" + "".join(f"why {i}?,because {i}\n" for i in range(60))
    ids = [team.upload("chat.jsonl", jsonl(chat)), team.upload("alpaca.jsonl", jsonl(alpaca)),
           team.upload("qa.csv", qa.encode(), fmt="csv")]
    spec = {"sources": [{"type": "artifact", "artifact_id": ids[0], "alias": "chat", "weight": 2},
                        {"type": "artifact", "artifact_id": ids[1], "alias": "alpaca", "weight": 1},
                        {"type": "artifact", "artifact_id": ids[2], "alias": "qa", "weight": 1,
                         "system_prompt": "Answer briefly."}],
            "validation_rows": 10, "seed": 3}
    result = team.run(spec)
    assert [(s["name"], s["shape"], s["usable"], s["rows_out"]) for s in result["sources"]] == [
        ("chat", "messages", 60, 60), ("alpaca", "alpaca", 60, 30), ("qa", "question_answer", 60, 30)]
    assert result["shape"] == "mixed" and result["rows_out"] == 120

    originals = {"chat": {i + 1: r["messages"][0]["content"] for i, r in enumerate(chat)},
                 "alpaca": {i + 1: f"do {i}" for i in range(60)},
                 "qa": {i + 2: f"why {i}?" for i in range(60)}}  # CSV rows are numbered by line
    seen = set()
    for split in ("train", "validation"):
        rows = team.lines(result["splits"][split]["artifact_id"])
        origin = team.lines(result["splits"][split]["provenance_artifact"])
        assert len(rows) == len(origin) == result["splits"][split]["rows"]
        for row, where in zip(rows, origin, strict=True):
            user = next(m["content"] for m in row["messages"] if m["role"] == "user")
            assert user == originals[where["source"]][where["row"]]
            assert (row["messages"][0]["role"] == "system") == (where["source"] == "qa")
            seen.add((where["source"], where["row"]))
    assert len(seen) == 120
    assert team.run(spec)["splits"]["train"]["token_distribution"] == result["splits"]["train"]["token_distribution"]


def test_weighted_job_max_examples_reads_only_each_share(team: Team) -> None:
    a = team.upload("a.jsonl", jsonl([{"messages": conv(f"a{i}")} for i in range(3000)]))
    b = team.upload("b.jsonl", jsonl([{"messages": conv(f"b{i}")} for i in range(3000)]))
    result = team.run({"sources": [{"type": "artifact", "artifact_id": a, "weight": 3},
                                   {"type": "artifact", "artifact_id": b, "weight": 1}], "max_examples": 40})
    assert [s["rows_out"] for s in result["sources"]] == [30, 10]
    assert all(s["rows_in"] < 1500 for s in result["sources"])


def test_duplicates_across_sources_are_kept_once_from_the_first(team: Team) -> None:
    shared = [{"messages": conv(f"same{i}")} for i in range(5)]
    a = team.upload("a.jsonl", jsonl(shared + [{"messages": conv("only-a")}]))
    b = team.upload("b.jsonl", jsonl([{"messages": conv("only-b")}] + shared))
    result = team.run({"sources": [{"type": "artifact", "artifact_id": a, "alias": "a"},
                                   {"type": "artifact", "artifact_id": b, "alias": "b"}]})
    assert result["dropped"] == {"duplicate": 5} and result["rows_out"] == 7
    assert {e["source"] for e in result["drop_examples"]["duplicate"]} == {"b"}
    assert [s["rows_out"] for s in result["sources"]] == [6, 1]


def test_a_weighted_source_without_usable_rows_fails_naming_it(team: Team) -> None:
    good = team.upload("good.jsonl", jsonl([{"messages": conv("g")}]))
    bad = team.upload("bad.jsonl", jsonl([{"messages": [{"role": "user", "content": "no answer"}]}]))
    with pytest.raises(JobFailed) as info:
        team.run({"sources": [{"type": "artifact", "artifact_id": good, "weight": 1},
                              {"type": "artifact", "artifact_id": bad, "weight": 1, "alias": "broken"}]})
    assert info.value.code == "empty_source" and "'broken' (spec.sources[1])" in info.value.message


def test_truncate_cuts_whole_turns_from_the_end(team: Team) -> None:
    long = conv("long", turns=6, words=40)
    short = conv("short", turns=1, words=2)
    hopeless = [{"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "y"},
                {"role": "user", "content": "z"}, {"role": "assistant", "content": "w"}]
    art = team.upload("t.jsonl", jsonl([{"messages": long}, {"messages": short}, {"messages": hopeless}]))
    spec = {"source": {"type": "artifact", "artifact_id": art}, "max_tokens": 200, "shuffle": False}
    dropped = team.run(spec)
    assert dropped["dropped"] == {"too_long": 2} and dropped["truncated"] == 0

    result = team.run({**spec, "truncate": True, "min_turns": 1})
    assert result["truncated"] == 1 and result["dropped"] == {"too_long": 1}
    rows = team.lines(result["train_artifact"])
    cut = rows[0]["messages"]
    assert cut == long[: len(cut)] and cut[-1]["role"] == "assistant" and 2 <= len(cut) < len(long)
    assert result["splits"]["train"]["token_distribution"]["max"] <= 200
    assert rows[1]["messages"] == short

    with pytest.raises(JobFailed) as info:  # six turns cannot fit: dropped, not cut below min_turns
        team.run({**spec, "truncate": True, "min_turns": 6})
    assert info.value.code == "no_rows" and info.value.details["dropped"]["too_long"] == 1
