"""The figures of a chaos run (bench/chaos.py), computed after the fact from what the run recorded and from
the database, the fake services' records and the artifact store. Nothing here trusts the service's own
account of how it coped: each figure is checked against evidence another part left behind.

Imported by bench/chaos.py and tests/integration/test_chaos.py; running it alone does nothing.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, select

TERMINAL = ("succeeded", "failed", "cancelled")
INFRA_CODES = {"worker_lost", "internal_error", "stalled", "preempted", "lease_lost", "database_unavailable",
               "broker_unavailable", "too_many_preemptions"}
# Worker and API log lines worth counting: a regex, and what it means for a reader of the summary. Exception
# lines are counted per exception class.
LOG_SIGNS = {
    r"Unrecoverable error": "worker main process died",
    r"Restoring \d+ unacknowledged": "unacked messages restored after a broker loss",
    r"WorkerLostError": "a pool process died under a task",
    r"lease lost": "a late write refused by the fence",
    r"pipeline crashed": "a pipeline ended on an unexpected exception",
    r"heartbeat failed": "a heartbeat could not be written",
    r"^(?:[\w.]+\.)?\w+(?:Error|Exception|Shutdown)\b": "an exception, by class",
}

@dataclass
class Observations:
    """What bench/chaos.py recorded while it ran (times are `time.time()` seconds)."""

    engine: Engine
    team_id: str
    lease_seconds: float
    reaper_interval_seconds: float
    heartbeat_seconds: float
    save_every: int
    provider_latency: float
    tinker_state_dir: Path
    artifact_dir: Path
    logs: Path
    faults: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[dict[str, Any]] = field(default_factory=list)
    samples: dict[str, list[tuple[float, int, int | None]]] = field(default_factory=dict)  # training progress
    gets: list[tuple[str, float, Any]] = field(default_factory=list)  # (phase, ms, status or error name)
    provider_requests: list[dict[str, Any]] = field(default_factory=list)
    worker_crashes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def p95(values: list[float]) -> float | None:
    """The 95th percentile (nearest rank); inf counts as a value (a takeover that never happened)."""
    if not values:
        return None
    data = sorted(values)
    return data[max(0, math.ceil(0.95 * len(data)) - 1)]


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or math.isinf(value) else round(value, digits)


def _columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def load(obs: Observations) -> dict[str, Any]:
    """Jobs, events, checkpoints and artifacts of the run's team, as plain dicts."""
    from app.models import Artifact, Checkpoint, Job, JobEvent

    job_cols = _columns(obs.engine, "job") & set(Job.__table__.c.keys())
    event_cols = _columns(obs.engine, "job_event") & set(JobEvent.__table__.c.keys())
    with obs.engine.connect() as conn:
        jobs = {r["id"]: dict(r) for r in conn.execute(
            select(*(Job.__table__.c[c] for c in sorted(job_cols))).where(Job.team_id == obs.team_id)).mappings()}
        ids = list(jobs)
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        checkpoints: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            query = (select(*(JobEvent.__table__.c[c] for c in sorted(event_cols)))
                     .where(JobEvent.job_id.in_(chunk)).order_by(JobEvent.job_id, JobEvent.seq))
            for r in conn.execute(query).mappings():
                events[r["job_id"]].append(dict(r))
            for r in conn.execute(select(Checkpoint).where(Checkpoint.job_id.in_(chunk))
                                  .order_by(Checkpoint.created_at)).mappings():
                checkpoints[r["job_id"]].append(dict(r))
        artifacts = [dict(r) for r in conn.execute(select(Artifact.__table__).where(
            Artifact.team_id == obs.team_id, Artifact.job_id.is_not(None))).mappings()]
    return {"jobs": jobs, "events": events, "checkpoints": checkpoints, "artifacts": artifacts,
            "event_has_lease_token": "lease_token" in event_cols, "job_has_preemptions": "preemptions" in job_cols}


def _infra_failure(job: dict[str, Any]) -> bool:
    error = job.get("error") or {}
    return job["status"] == "failed" and (error.get("user_error") is not True or error.get("code") in INFRA_CODES)


def zombie_writes(data: dict[str, Any], obs: Observations) -> dict[str, list[str]]:
    """Writes that landed after the writer's lease had moved on, by the evidence that shows them."""
    found: dict[str, list[str]] = defaultdict(list)
    key = "lease_token" if data["event_has_lease_token"] else "attempt"
    for job_id, events in data["events"].items():
        newest, terminal_seq = None, None
        for e in events:
            mark = e.get(key)
            if mark is not None and newest is not None and mark < newest:
                found[f"event_older_{key}"].append(f"{job_id} seq {e['seq']} {e['type']} ({key} {mark} < {newest})")
            if mark is not None:
                newest = mark if newest is None else max(newest, mark)
            if terminal_seq is not None:
                found["event_after_terminal"].append(f"{job_id} seq {e['seq']} {e['type']}")
            if e["type"] in TERMINAL and terminal_seq is None:
                terminal_seq = e["seq"]
    # A Tinker run belongs to one lease (each claim builds its own training client): its checkpoint rows must
    # all be written before the next lease's claim.
    for job_id, rows in data["checkpoints"].items():
        claims = sorted(_ts(e["created_at"]) or 0.0 for e in data["events"].get(job_id, []) if e["type"] == "running")
        runs: dict[str, list[float]] = defaultdict(list)
        for c in rows:
            runs[c["uri"].removeprefix("tinker://").split("/")[0]].append(_ts(c["created_at"]) or 0.0)
        for run, times in runs.items():
            first = min(times)
            later = [t for t in claims if t > first]
            if later and max(times) > later[0]:
                found["checkpoint_after_next_claim"].append(f"{job_id} run {run}")
    # A registered artifact's file must be the one registered: same bytes, not replaced after registration.
    for art in data["artifacts"]:
        path = obs.artifact_dir / art["uri"]
        if not path.exists():
            found["artifact_missing"].append(f"{art['job_id']} {art['uri']}")  # lost, not a zombie write
            continue
        registered = _ts(art["created_at"]) or 0.0
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if (art.get("sha256") and digest != art["sha256"]) or path.stat().st_ctime > registered + 1.0:
            found["artifact_replaced_after_registration"].append(f"{art['job_id']} {art['uri']}")
    return dict(found)


def steps_redone(data: dict[str, Any], obs: Observations) -> dict[str, tuple[int, int, int]]:
    """Per training job: (the most steps one resume re-executed, the distinct steps executed by more than one
    lease, the repeated step executions in all).

    The first is what `save_every` bounds: a resume re-executes the steps earlier leases had reached beyond the
    checkpoint it resumes from. The other two add up over resumes (two preemptions in different windows can
    each redo up to `save_every` steps), so they are context, not the target.

    Lease k executes steps (start_k, reached_k]. `reached` comes from the job row's progress sampled every
    ~0.1 s, so it is a lower bound by a step or so; a new lease's first samples, which still show the previous
    lease's progress, are skipped. `start` is the newest state checkpoint recorded before the lease was first
    seen (0 without one), which is where the pipeline resumes (latest_checkpoint by next_step)."""
    out: dict[str, tuple[int, int, int]] = {}
    for job_id, samples in obs.samples.items():
        if data["jobs"].get(job_id, {}).get("kind") != "training":
            continue
        leases: dict[int, dict[str, Any]] = {}
        previous_done: int | None = None
        for t, token, done in samples:
            lease = leases.setdefault(token, {"first": t, "max": None, "fresh": False})
            if not lease["fresh"] and done != previous_done:
                lease["fresh"] = True
            if lease["fresh"] and done is not None:
                lease["max"] = done if lease["max"] is None else max(lease["max"], done)
            previous_done = done
        states = [(_ts(c["created_at"]) or 0.0, c["next_step"]) for c in data["checkpoints"].get(job_id, [])
                  if c["kind"] == "state"]
        runs: Counter[int] = Counter()
        per_resume, reached = 0, None
        for token in sorted(leases):
            lease = leases[token]
            start = max((step for t, step in states if t <= lease["first"]), default=0)
            if reached is not None:
                per_resume = max(per_resume, reached - start)
            if lease["max"] is not None:
                runs.update(range(start + 1, lease["max"] + 1))
                reached = lease["max"] if reached is None else max(reached, lease["max"])
        out[job_id] = (per_resume, sum(1 for n in runs.values() if n > 1), sum(n - 1 for n in runs.values()))
    return out


def batches_applied_twice(data: dict[str, Any], obs: Observations) -> tuple[int, list[str]]:
    """Repeated batch fingerprints in the lineage of each training job's last state (its final state when it
    succeeded, its last checkpoint when it was cancelled)."""
    from tests.fakes.tinker_fake import read_checkpoint

    twice, notes = 0, []
    for job_id, job in data["jobs"].items():
        if job["kind"] != "training" or job["status"] not in ("succeeded", "cancelled"):
            continue
        path = (job.get("result") or {}).get("state_path")
        if path is None:
            states = [c for c in data["checkpoints"].get(job_id, []) if c["kind"] == "state"]
            if not states:
                continue
            path = max(states, key=lambda c: (c["next_step"], _ts(c["created_at"]) or 0.0))["uri"]
        try:
            lineage = [s["fingerprint"] for s in read_checkpoint(obs.tinker_state_dir, path)["lineage"]
                       if s.get("fingerprint")]
        except FileNotFoundError:
            notes.append(f"{job_id}: no checkpoint file for {path}")
            continue
        repeats = len(lineage) - len(set(lineage))
        twice += repeats
        if repeats:
            notes.append(f"{job_id}: {repeats} of {len(lineage)} batches applied twice")
        total = (job.get("result") or {}).get("steps")
        if job["status"] == "succeeded" and total is not None and len(lineage) != total:
            notes.append(f"{job_id}: final lineage has {len(lineage)} steps, the plan {total}")
    return twice, notes


def provider_calls_beyond(obs: Observations, generation_ids: set[str]) -> dict[str, int]:
    """Per generation job: calls for an item that arrived after an earlier call for it was answered 200 OK
    (arrival + the fake's latency, plus 50 ms, so a call in flight when the answer went out does not count)."""
    by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in obs.provider_requests:
        if r["item"].split(":")[0] in generation_ids:
            by_item[r["item"]].append(r)
    out: Counter[str] = Counter()
    for item, calls in by_item.items():
        calls.sort(key=lambda r: r["t"])
        answered = None
        for r in calls:
            if answered is not None and r["t"] > answered:
                out[item.split(":")[0]] += 1
            if r["outcome"] == "ok" and answered is None:
                answered = r["t"] + obs.provider_latency + 0.05
    return dict(out)


def takeovers(data: dict[str, Any], obs: Observations) -> tuple[list[float], list[tuple[float, float]], list[str]]:
    """Seconds from each kill -9 / SIGSTOP to each victim job's next claim (its next `running` event); a
    victim that ended before the fault, or was cancelled before any new claim, does not count; one never
    claimed again counts as infinite. Also, per takeover, how it splits: fault → the job handed back to the
    queue (its first `requeued`/`preempted` event, the reaper's part), and from there → the claim (the wait
    for a worker)."""
    seconds, split, notes = [], [], []
    for fault in obs.faults:
        if fault["kind"] not in ("kill", "sigstop"):
            continue
        for job_id in fault.get("victims", []):
            events = [(_ts(e["created_at"]) or 0.0, e["type"]) for e in data["events"].get(job_id, [])]
            ended = min((t for t, kind in events if kind in TERMINAL), default=None)
            if ended is not None and ended <= fault["t"]:
                continue
            claim = min((t for t, kind in events if kind == "running" and t > fault["t"]), default=None)
            if claim is None or (ended is not None and ended < claim):
                if ended is None or data["jobs"][job_id]["status"] != "cancelled":
                    seconds.append(math.inf)
                    notes.append(f"{job_id}: never claimed again after the {fault['kind']} at +{fault['at']:.0f}s "
                                 f"(status {data['jobs'][job_id]['status']})")
                continue
            seconds.append(claim - fault["t"])
            handed = min((t for t, kind in events if kind in ("requeued", "preempted") and fault["t"] < t <= claim),
                         default=None)
            if handed is not None:
                split.append((handed - fault["t"], claim - handed))
    return seconds, split, notes


def cancel_latencies(data: dict[str, Any], obs: Observations) -> tuple[list[float], list[str]]:
    seconds, notes = [], []
    for c in obs.cancels:
        events = data["events"].get(c["job_id"], [])
        ended = min((_ts(e["created_at"]) or 0.0 for e in events if e["type"] in TERMINAL), default=None)
        if ended is None:
            seconds.append(math.inf)
            notes.append(f"{c['job_id']}: cancel requested at +{c['at']:.0f}s, never ended")
        elif ended >= c["t"]:
            seconds.append(ended - c["t"])
    return seconds, notes


def log_signs(logs: Path) -> dict[str, dict[str, Any]]:
    """How often each LOG_SIGNS pattern appears in the run's logs, with the first matching line."""
    out: dict[str, dict[str, Any]] = {}
    for log in sorted(logs.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            for pattern, meaning in LOG_SIGNS.items():
                found = re.search(pattern, line.strip())
                if found:
                    key = found.group(0) if meaning.endswith("by class") else pattern
                    entry = out.setdefault(key, {"count": 0, "meaning": meaning,
                                                 "example": f"{log.name}: {line.strip()[:240]}"})
                    entry["count"] += 1
    return out


def figures(obs: Observations) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's JSON figures, and the details behind them (for the human-readable summary)."""
    data = load(obs)
    jobs = data["jobs"]
    statuses = Counter(j["status"] for j in jobs.values())
    cancel_requested = {c["job_id"] for c in obs.cancels}
    double = [j for j, ev in data["events"].items() if sum(e["type"] in TERMINAL for e in ev) > 1]
    no_terminal_event = [j for j, job in jobs.items() if job["status"] in TERMINAL
                         and not any(e["type"] in TERMINAL for e in data["events"].get(j, []))]
    infra = {j: job for j, job in jobs.items() if _infra_failure(job)}
    lost = {j: job for j, job in jobs.items() if job["status"] not in TERMINAL}
    own_retries = {j: sum(e["type"] == "retrying" for e in data["events"].get(j, [])) for j in jobs}
    spent = {j: max(0, (job.get("attempt") or 0) - 1 - own_retries[j]) for j, job in jobs.items()}
    zombies = zombie_writes(data, obs)
    redone = steps_redone(data, obs)
    twice, lineage_notes = batches_applied_twice(data, obs)
    beyond = provider_calls_beyond(obs, {j for j, job in jobs.items() if job["kind"] == "generation"})
    takeover, takeover_split, takeover_notes = takeovers(data, obs)
    cancel, cancel_notes = cancel_latencies(data, obs)
    quiet = [ms for phase, ms, _ in obs.gets if phase == "quiet"]
    chaos = [ms for phase, ms, _ in obs.gets if phase == "chaos"]
    get_p95, quiet_p95 = p95(chaos), p95(quiet)
    takeover_p95, cancel_p95 = p95(takeover), p95(cancel)
    fig = {
        "bench": "chaos",
        "jobs": len(jobs),
        "succeeded": statuses["succeeded"],
        "cancelled": statuses["cancelled"],
        "failed_by_infrastructure": len(infra),
        "lost": len(lost),
        "double_terminal": len(double),
        "zombie_writes_accepted": sum(len(v) for k, v in zombies.items() if k != "artifact_missing"),
        "attempts_spent_by_infrastructure": sum(spent.values()),
        "training_batches_applied_twice": twice,
        "training_steps_redone_max": max((resume for resume, _, _ in redone.values()), default=0),
        "save_every": obs.save_every,
        "provider_calls_beyond_retries": sum(beyond.values()),
        "takeover_p95_s": None if takeover_p95 is None or math.isinf(takeover_p95) else round(takeover_p95, 2),
        "cancel_p95_s": None if cancel_p95 is None or math.isinf(cancel_p95) else round(cancel_p95, 2),
        "get_p95_ms": None if get_p95 is None else round(get_p95, 1),
        "get_p95_vs_quiet": None if not (get_p95 and quiet_p95) else round(get_p95 / quiet_p95, 2),
        # context for the figures above
        "failed": statuses["failed"],
        "not_cancelled_not_succeeded": sum(1 for j, job in jobs.items()
                                           if job["status"] != "succeeded"
                                           and not (job["status"] == "cancelled" and j in cancel_requested)),
        "training_steps_redone_per_job_max": max((distinct for _, distinct, _ in redone.values()), default=0),
        "training_step_reruns_max": max((reruns for _, _, reruns in redone.values()), default=0),
        "preemptions": sum(j.get("preemptions") or 0 for j in jobs.values()) if data["job_has_preemptions"] else None,
        "takeovers": len(takeover), "takeovers_never": sum(math.isinf(s) for s in takeover),
        "takeover_p95_of_claimed_s": _round(p95([s for s in takeover if not math.isinf(s)])),
        "takeover_to_requeue_p95_s": _round(p95([a for a, _ in takeover_split])),
        "takeover_requeue_to_claim_p95_s": _round(p95([b for _, b in takeover_split])),
        "cancels": len(obs.cancels), "get_quiet_p95_ms": None if quiet_p95 is None else round(quiet_p95, 1),
        "get_requests": len(quiet) + len(chaos),
        "get_errors": sum(1 for phase, _, status in obs.gets if phase and status != 200),
        "worker_crashes": len(obs.worker_crashes),
        "faults": dict(Counter(f["kind"] for f in obs.faults)),
    }
    details = {
        "statuses": dict(statuses),
        "infra_failures": {j: f"{(job.get('error') or {}).get('code')} (attempt {job.get('attempt')}): "
                              f"{str((job.get('error') or {}).get('message'))[:200]}" for j, job in infra.items()},
        "lost": {j: {k: job.get(k) for k in ("kind", "status", "attempt", "lease_owner", "progress")}
                 for j, job in lost.items()},
        "double_terminal": {j: [e["type"] for e in data["events"][j] if e["type"] in TERMINAL] for j in double},
        "no_terminal_event": no_terminal_event,
        "unexpected_end": {j: job["status"] for j, job in jobs.items() if job["status"] != "succeeded"
                           and not (job["status"] == "cancelled" and j in cancel_requested)},
        "attempts_spent": {j: n for j, n in spent.items() if n},
        "zombies": zombies,
        "steps_redone": {j: f"at most {m} per resume, {d} distinct, {r} re-runs" for j, (m, d, r) in redone.items()
                         if r},
        "lineage_notes": lineage_notes,
        "provider_beyond": beyond,
        "takeover_notes": takeover_notes,
        "cancel_notes": cancel_notes,
        "get_errors": dict(Counter(str(status) for phase, _, status in obs.gets if phase and status != 200)),
        "event_mark": "lease_token" if data["event_has_lease_token"] else "attempt",
        "log_signs": log_signs(obs.logs),
        "error_codes": dict(Counter((job.get("error") or {}).get("code") for job in jobs.values()
                                    if job["status"] == "failed")),
    }
    return fig, details


def targets(fig: dict[str, Any], *, lease_seconds: float, reaper_interval_seconds: float,
            heartbeat_seconds: float) -> dict[str, bool | None]:
    """Each target of the chaos bench and whether this run met it: None when the run had nothing to measure
    it on (no such fault was injected); a figure that was sampled but came out unmeasurable (a takeover or a
    cancel that never happened) fails its target."""

    def at_most(value: Any, limit: float, samples: int) -> bool | None:
        if not samples:
            return None
        return value is not None and value <= limit

    return {
        "every job not cancelled succeeds": fig["not_cancelled_not_succeeded"] == 0,
        "0 failed by infrastructure": fig["failed_by_infrastructure"] == 0,
        "0 lost": fig["lost"] == 0,
        "0 double terminal": fig["double_terminal"] == 0,
        "0 zombie writes accepted": fig["zombie_writes_accepted"] == 0,
        "0 attempts spent by infrastructure": fig["attempts_spent_by_infrastructure"] == 0,
        "0 training batches applied twice": fig["training_batches_applied_twice"] == 0,
        f"steps redone <= save_every ({fig['save_every']})": fig["training_steps_redone_max"] <= fig["save_every"],
        f"takeover p95 <= lease + reaper interval ({lease_seconds + reaper_interval_seconds:g} s)":
            # kills or pauses that found no victim (lease_owner no longer names the pool process?) fail it
            at_most(fig["takeover_p95_s"], lease_seconds + reaper_interval_seconds,
                    fig["takeovers"] or fig["faults"].get("kill", 0) + fig["faults"].get("sigstop", 0)),
        f"cancel p95 <= 2 heartbeats ({2 * heartbeat_seconds:g} s)":
            at_most(fig["cancel_p95_s"], 2 * heartbeat_seconds, fig["cancels"]),
        "get p95 vs quiet <= 3": at_most(fig["get_p95_vs_quiet"], 3.0, fig["get_requests"]),
    }


def _short(value: Any, limit: int = 6) -> str:
    items = [f"{k}: {v}" for k, v in value.items()] if isinstance(value, dict) else [str(v) for v in value]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return re.sub(r"\s+", " ", "; ".join(items[:limit]))[:2500] + more


def summary(fig: dict[str, Any], details: dict[str, Any], met: dict[str, bool | None]) -> list[str]:
    """The human-readable lines printed before the JSON line."""
    lines = [
        f"jobs {fig['jobs']}: {details['statuses']}; faults {fig['faults']}; worker crashes {fig['worker_crashes']}",
        f"takeovers {fig['takeovers']} (never: {fig['takeovers_never']}), p95 {fig['takeover_p95_s']} s "
        f"(of those claimed again {fig['takeover_p95_of_claimed_s']} s: fault → requeued p95 "
        f"{fig['takeover_to_requeue_p95_s']} s, requeued → claimed p95 {fig['takeover_requeue_to_claim_p95_s']} s); "
        f"cancels {fig['cancels']}, p95 {fig['cancel_p95_s']} s",
        f"GET /v1/jobs/{{id}}: {fig['get_requests']} requests, p95 quiet {fig['get_quiet_p95_ms']} ms, "
        f"chaos {fig['get_p95_ms']} ms, errors {details['get_errors'] or 0}",
    ]
    for name, value in (("failed by infrastructure", details["infra_failures"]), ("lost", details["lost"]),
                        ("ended other than asked", details["unexpected_end"]),
                        ("double terminal", details["double_terminal"]),
                        ("terminal status without a terminal event", details["no_terminal_event"]),
                        ("attempts spent by infrastructure", details["attempts_spent"]),
                        (f"zombie writes (event mark: {details['event_mark']})", details["zombies"]),
                        ("training steps redone", details["steps_redone"]),
                        ("training lineage", details["lineage_notes"]),
                        ("provider calls after an answered call", details["provider_beyond"]),
                        ("takeovers", details["takeover_notes"]), ("cancels", details["cancel_notes"]),
                        ("failed jobs by error code", details["error_codes"])):
        if value:
            lines.append(f"  {name}: {_short(value)}")
    for pattern, sign in details["log_signs"].items():
        lines.append(f"  log '{pattern}' ({sign['meaning']}): {sign['count']}x, e.g. {sign['example']}")
    lines.append("targets:")
    lines += [f"  [{'n/a' if ok is None else 'ok' if ok else 'FAIL'}] {name}" for name, ok in met.items()]
    return lines
