"""Chaos: do jobs survive the infrastructure? A real API, real Celery workers, a private Redis and PostgreSQL
(database `tuneq_chaos`, emptied at start) run a steady mix of test, training (fake Tinker, real checkpoints),
generation (loopback fake OpenRouter) and dataset jobs while a fault thread kill -9s workers, restarts Redis,
terminates the database's backends, SIGTERMs workers as a deploy would, SIGSTOPs workers past their lease and
cancels jobs, and a steady load of `GET /v1/jobs/{id}` is timed against a quiet phase of the same run. Then it
waits for every job to end and checks the outcome against the database, the fakes' records and the artifact
store (bench/chaos_figures.py). Last line: one JSON object.

    .venv/bin/python bench/chaos.py            # about 4 minutes with the defaults

Every Config field can be set from the environment as CHAOS_<FIELD>, e.g. CHAOS_SECONDS=300 CHAOS_KILLS=20.
BENCH_STRICT=1 exits 1 when a target fails; otherwise the exit status is 0 so that `make bench`, which stops
at the first failing bench, still runs the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.chaos_figures import Observations, figures, summary, targets  # noqa: E402
from tests.fakes.openrouter_server import FakeOpenRouter  # noqa: E402
from tests.support import Stack, free_port, process_group, processes_with_env, start_redis_server  # noqa: E402

OPENROUTER_KEY = "sk-or-v1-tuneq-chaos-key-0123456789abcdef"
TOPICS = ["fractions", "loops", "proofs", "graphs", "limits", "vectors", "sets", "primes"]


@dataclass
class Config:
    seconds: float = 180.0  # the chaos phase
    quiet_seconds: float = 20.0  # the same load with no faults, first
    drain_seconds: float = 240.0  # after the chaos, how long every job gets to end
    kills: int = 10
    redis_restarts: int = 3
    pg_terminations: int = 3
    sigterms: int = 2
    sigstops: int = 2
    cancels: int = 6
    workers: int = 3
    concurrency: int = 2
    # Jobs kept queued or running: one worker's slots stay free, so a takeover measures the lifecycle
    # (detection, hand-back, wake-up) rather than a wait for capacity. Raise it to run saturated.
    active_jobs: int = 4
    save_every: int = 4
    heartbeat_seconds: float = 1.0
    lease_seconds: float = 5.0
    reaper_interval_seconds: float = 1.0
    requeue_after_seconds: float = 5.0
    grace_seconds: float = 5.0  # SIGTERM → SIGKILL, a deploy's stop grace period
    redis_down_seconds: float = 2.0
    get_rps: float = 20.0
    get_threads: int = 4
    seed: int = 0
    test_steps: int = 20
    test_step_seconds: float = 0.5
    train_rows: int = 96
    train_epochs: int = 2
    train_batch_size: int = 4
    step_latency: float = 0.15  # fake Tinker forward_backward seconds (+ 0.02 optim_step)
    generation_items: int = 40
    provider_latency: float = 0.2

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"CHAOS_{f.name.upper()}")
            if raw is not None:
                values[f.name] = (float if f.type == "float" else int)(raw)
        return cls(**{**values, **overrides})


@dataclass
class Slot:
    """A worker position, as a supervisor (compose `restart: always`) keeps one: its current process."""

    proc: subprocess.Popen[bytes]
    stopped: bool = False


class ChaosRun:
    """One run: start the stack, load it, inject faults, drain, collect Observations. Use as a context
    manager: every process it started is stopped on exit, whatever happened."""

    def __init__(self, config: Config, *, db_url: str, workdir: Path,
                 terminate_backends: Callable[[], int] | None = None, say: Callable[[str], None] = print) -> None:
        self.cfg, self.db_url, self.workdir, self.say = config, db_url, workdir, say
        self.terminate_backends = terminate_backends
        self.rng = random.Random(config.seed)
        self.lock = threading.RLock()  # worker operations
        self.stop = threading.Event()  # chaos over: submitter, faults, load stop
        self.done = threading.Event()  # run over: monitor and supervisor stop
        self.phase: str | None = None
        self.t0 = time.time()
        self.slots: list[Slot] = []
        self.retiring: list[threading.Thread] = []
        self.jobs: dict[str, str] = {}  # id → kind, in submission order
        self.redis: subprocess.Popen[bytes] | None = None
        self.fake: FakeOpenRouter | None = None
        self.stack: Stack | None = None
        self.threads: list[threading.Thread] = []
        for sub in ("logs", "var/datasets", "tinker", "redis"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        self.marker = str(workdir / "var")  # TUNEQ_VAR_DIR of every process this run starts
        from app.db import make_engine

        self.engine = make_engine(db_url)
        self.obs = Observations(
            engine=self.engine, team_id="", lease_seconds=config.lease_seconds,
            reaper_interval_seconds=config.reaper_interval_seconds, heartbeat_seconds=config.heartbeat_seconds,
            save_every=config.save_every, provider_latency=config.provider_latency,
            tinker_state_dir=workdir / "tinker", artifact_dir=workdir / "var" / "artifacts", logs=workdir / "logs")

    # ---- set-up and tear-down ---------------------------------------------------------------------------

    def __enter__(self) -> ChaosRun:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def env(self) -> dict[str, str]:
        cfg = self.cfg
        tinker = {"state_dir": str(self.workdir / "tinker"),
                  "latency": {"forward_backward": cfg.step_latency, "optim_step": 0.02, "save": 0.02}}
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TUNEQ_", "CHAOS_"))},
            "TUNEQ_DATABASE_URL": self.db_url, "TUNEQ_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "TUNEQ_VAR_DIR": self.marker,
            "TUNEQ_LOCAL_DATASETS_DIR": str(self.workdir / "var" / "datasets"),
            "TUNEQ_ENABLE_TEST_JOBS": "1", "TUNEQ_LOG_LEVEL": "INFO", "TUNEQ_KEY_CACHE_SECONDS": "1",
            "TUNEQ_HEARTBEAT_SECONDS": str(cfg.heartbeat_seconds), "TUNEQ_LEASE_SECONDS": str(cfg.lease_seconds),
            "TUNEQ_REAPER_INTERVAL_SECONDS": str(cfg.reaper_interval_seconds),
            "TUNEQ_REQUEUE_AFTER_SECONDS": str(cfg.requeue_after_seconds),
            "TUNEQ_WORKER_CONCURRENCY": str(cfg.concurrency), "HF_HUB_OFFLINE": "1",
            "OPENROUTER_API_KEY": OPENROUTER_KEY, "TUNEQ_OPENROUTER_BASE_URL": self.fake.url if self.fake else "",
            "TUNEQ_TINKER_FAKE": "tests.fakes.tinker_fake:make_fake_service_client",
            "TUNEQ_TINKER_FAKE_CONFIG": json.dumps(tinker),
        }

    def _start(self) -> None:
        from app.migrate import upgrade

        upgrade(self.db_url)
        self.redis = start_redis_server(self.redis_port, self.workdir / "redis", env=self.env())
        self.fake = FakeOpenRouter(api_key=OPENROUTER_KEY, latency=self.cfg.provider_latency,
                                   max_logged_requests=1_000_000).start()
        self.stack = Stack(env=self.env(), base_url=f"http://127.0.0.1:{free_port()}", logs=self.workdir / "logs")
        self.stack.start_api()
        for _ in range(self.cfg.workers):
            self.slots.append(Slot(self._start_worker()))
        self.obs.team_id, key = self._team_and_key()
        self.headers = {"Authorization": f"Bearer {key}"}
        self.say(f"stack up: API {self.stack.base_url}, {self.cfg.workers} workers, redis :{self.redis_port}, "
                 f"{self.engine.dialect.name}, logs {self.workdir / 'logs'}")

    def _team_and_key(self) -> tuple[str, str]:
        from sqlalchemy.orm import Session

        from app.services import auth

        with Session(self.engine) as session:
            team = auth.get_or_create_team(session, f"chaos-{uuid.uuid4().hex[:8]}")
            _, plain = auth.create_key(session, team_id=team.id, rate_limit="1000000/second")  # measure, not refuse
            session.commit()
            return team.id, plain

    def close(self) -> None:
        self.stop.set()
        self.done.set()
        locked = self.lock.acquire(timeout=90)  # a worker being started by a fault finishes starting first
        try:
            workers = self.stack.workers if self.stack is not None else []
            for proc in {*workers, *(slot.proc for slot in self.slots)}:  # the run is over: no grace needed
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if self.stack is not None:
                self.stack.stop()  # reaps the workers, then stops the API
            if self.redis is not None and self.redis.poll() is None:
                self.redis.terminate()
                self.redis.wait(timeout=10)
            # Anything started while the run was interrupted is in no list yet; every process of this run
            # carries its own TUNEQ_VAR_DIR.
            for pid in processes_with_env("TUNEQ_VAR_DIR", self.marker) - {os.getpid()}:
                with contextlib.suppress(OSError):
                    group = os.getpgid(pid)
                    if group == os.getpgrp():  # the API and Redis share this process's group
                        os.kill(pid, signal.SIGKILL)
                    else:  # a worker: its own group
                        os.killpg(group, signal.SIGKILL)
        finally:
            if locked:
                self.lock.release()
        for thread in self.retiring:
            thread.join(timeout=30)
        if self.fake is not None:
            self.obs.provider_requests = [{"t": r["t"], "item": r["item"], "outcome": r.get("outcome")}
                                          for r in list(self.fake.requests)]
            self.fake.stop()
        self.engine.dispose()

    # ---- workers ------------------------------------------------------------------------------------------

    def _start_worker(self) -> subprocess.Popen[bytes]:
        assert self.stack is not None
        if self.done.is_set():
            raise RuntimeError("the run is over: no new worker")
        for attempt in range(1, 4):
            try:
                return self.stack.start_worker(concurrency=self.cfg.concurrency)
            except AssertionError as exc:  # exited or not ready within 60 s
                self.note(f"worker did not start (try {attempt}): {str(exc)[-300:]}")
                time.sleep(1)
        raise RuntimeError("a worker would not start three times in a row; see the logs")

    def _running_on(self, proc: subprocess.Popen[bytes]) -> list[str]:
        """Jobs whose lease is held by a process of this worker (lease_owner ends with the pool child's pid)."""
        pids = process_group(proc.pid)
        owners = self._sql(lambda conn: conn.execute(self._jobs_query("running")).all()) or []
        return [r.id for r in owners if r.lease_owner and int((re.findall(r"\d+", r.lease_owner) or [0])[-1]) in pids]

    def _target(self) -> Slot | None:
        """A running, not paused worker: the one holding most jobs, so faults hit work in flight."""
        live = [s for s in self.slots if not s.stopped and s.proc.poll() is None]
        if not live:
            return None
        self.rng.shuffle(live)
        return max(live, key=lambda s: len(self._running_on(s.proc)))

    def _supervise(self) -> None:
        """Restart a worker that died on its own, as a supervisor would; each such death is recorded."""
        while not self.done.wait(1.0):
            with self.lock:
                for slot in self.slots:
                    rc = slot.proc.poll()
                    if rc is None or slot.stopped:
                        continue
                    log = getattr(slot.proc, "log_path", None)
                    tail = log.read_text(errors="replace").splitlines()[-40:] if log else []
                    why = [line for line in tail if re.search(r"CRITICAL|Unrecoverable|Error|error", line)][-3:]
                    self.obs.worker_crashes.append({"at": time.time() - self.t0, "rc": rc, "log": str(log),
                                                    "lines": why})
                    self.note(f"worker {log.name if log else slot.proc.pid} died on its own (rc {rc}): "
                              f"{' | '.join(why)[:400]}; restarting it")
                    if self.stack is not None and slot.proc in self.stack.workers:
                        self.stack.workers.remove(slot.proc)
                    slot.proc = self._start_worker()

    # ---- faults ---------------------------------------------------------------------------------------------

    def _record(self, kind: str, t: float, **extra: Any) -> None:
        self.obs.faults.append({"kind": kind, "t": t, "at": t - self.t0, **extra})
        self.say(f"[+{t - self.t0:6.1f}s] {kind} {' '.join(f'{k}={v}' for k, v in extra.items())}")

    def fault_kill(self) -> None:
        with self.lock:
            slot = self._target()
            if slot is None:
                return
            victims = self._running_on(slot.proc)
            t = time.time()
            assert self.stack is not None
            self.stack.kill_worker(slot.proc)  # SIGKILL to the whole process group
            self._record("kill", t, victims=victims)
            slot.proc = self._start_worker()

    def fault_sigterm(self) -> None:
        """A deploy: SIGTERM to the worker's main process (as `docker stop` does), SIGKILL to its group after
        the grace period if it is still there; the replacement starts at once."""
        with self.lock:
            slot = self._target()
            if slot is None:
                return
            old, victims, t = slot.proc, self._running_on(slot.proc), time.time()
            os.kill(old.pid, signal.SIGTERM)
            self._record("sigterm", t, victims=victims)

            def retire() -> None:
                try:
                    old.wait(timeout=self.cfg.grace_seconds)
                    self.note(f"SIGTERMed worker {old.pid} exited by itself after {time.time() - t:.1f} s")
                except subprocess.TimeoutExpired:
                    self.note(f"SIGTERMed worker {old.pid} still running after the {self.cfg.grace_seconds:g} s "
                              "grace period: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(old.pid, signal.SIGKILL)
                old.wait()
                if self.stack is not None and old in self.stack.workers:
                    self.stack.workers.remove(old)

            thread = threading.Thread(target=retire, name="retire", daemon=True)
            thread.start()
            self.retiring.append(thread)
            slot.proc = self._start_worker()

    def fault_sigstop(self) -> None:
        """Pause a worker (a VM freeze, a long GC) past its lease, then let it go on believing it owns its jobs."""
        pause = self.cfg.lease_seconds + 2 * self.cfg.reaper_interval_seconds + 2.0
        with self.lock:
            slot = self._target()
            if slot is None:
                return
            proc, victims, t = slot.proc, self._running_on(slot.proc), time.time()
            os.killpg(proc.pid, signal.SIGSTOP)
            slot.stopped = True
            self._record("sigstop", t, victims=victims, seconds=pause)

        def resume() -> None:
            with self.lock:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                slot.stopped = False

        timer = threading.Timer(pause, resume)
        timer.daemon = True
        timer.start()
        self.retiring.append(timer)

    def fault_redis(self) -> None:
        with self.lock:
            assert self.redis is not None
            t = time.time()
            self.redis.terminate()  # nothing is persisted: queued wake-ups and unacked messages are gone
            self.redis.wait(timeout=10)
            time.sleep(self.cfg.redis_down_seconds)
            if self.done.is_set():
                return
            self.redis = start_redis_server(self.redis_port, self.workdir / "redis", env=self.env())
            self._record("redis_restart", t, down_seconds=round(time.time() - t, 2))

    def fault_pg(self) -> None:
        if self.terminate_backends is None:
            return
        t = time.time()
        self._record("pg_terminate", t, backends=self.terminate_backends())

    def fault_cancel(self) -> None:
        rows = self._sql(lambda conn: conn.execute(self._jobs_query("running", "queued")).all()) or []
        candidates = [r.id for r in rows if r.kind in ("training", "test", "generation")]
        if not candidates:
            return
        job_id = self.rng.choice(candidates)
        with httpx.Client(base_url=self._base(), headers=self.headers, timeout=10) as client:
            for _ in range(20):
                t = time.time()
                try:
                    r = client.post(f"/v1/jobs/{job_id}/cancel")
                except httpx.HTTPError:
                    time.sleep(0.25)
                    continue
                if r.status_code < 500:
                    self.obs.cancels.append({"job_id": job_id, "t": t, "at": t - self.t0, "status": r.status_code})
                    self.say(f"[+{t - self.t0:6.1f}s] cancel {job_id} -> {r.status_code}")
                    return
                time.sleep(0.25)
        self.note(f"cancel of {job_id} never answered below 500")

    def _schedule(self) -> list[str]:
        cfg = self.cfg
        plan = (["kill"] * cfg.kills + ["redis"] * cfg.redis_restarts + ["sigterm"] * cfg.sigterms
                + ["sigstop"] * cfg.sigstops + ["cancel"] * cfg.cancels
                + (["pg"] * cfg.pg_terminations if self.terminate_backends else []))
        self.rng.shuffle(plan)
        return plan

    def _faults(self, plan: list[str], start: float) -> None:
        gap = self.cfg.seconds / max(1, len(plan))
        for i, kind in enumerate(plan):
            due = start + (i + 0.5) * gap
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                getattr(self, f"fault_{kind}")()
            except Exception as exc:  # the run goes on; the figures show what the fault left behind
                self.note(f"fault {kind} failed: {type(exc).__name__}: {exc}")

    # ---- load -------------------------------------------------------------------------------------------------

    def _base(self) -> str:
        assert self.stack is not None
        return self.stack.base_url

    def _jobs_query(self, *statuses: str) -> Any:
        from sqlalchemy import select

        from app.models import Job

        return select(Job.id, Job.kind, Job.status, Job.lease_owner, Job.lease_token, Job.progress).where(
            Job.team_id == self.obs.team_id, Job.status.in_(statuses))

    def _sql(self, work: Callable[[Any], Any]) -> Any:
        """A read of our own; None while the database refuses (our connections are terminated too)."""
        try:
            with self.engine.connect() as conn:
                return work(conn)
        except Exception as exc:
            self.note(f"bench SQL read failed: {type(exc).__name__}", quiet=True)
            return None

    def submit(self, client: httpx.Client, kind: str, spec: dict[str, Any]) -> str:
        """POST a job, retrying through faults with one Idempotency-Key (a retry never makes a second job)."""
        key = uuid.uuid4().hex
        for _ in range(60):
            try:
                r = client.post("/v1/jobs", json={"kind": kind, "spec": spec}, headers={"Idempotency-Key": key})
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            if r.status_code in (200, 201):
                job_id = r.json()["id"]
                self.jobs[job_id] = kind
                return str(job_id)
            if r.status_code < 500 and r.status_code != 409:
                raise RuntimeError(f"POST /v1/jobs {kind} refused: {r.status_code} {r.text[:300]}")
            time.sleep(0.5)
        raise RuntimeError(f"POST /v1/jobs {kind} failed for 30 s")

    def spec(self, kind: str, n: int) -> dict[str, Any]:
        cfg = self.cfg
        if kind == "test":
            return {"steps": cfg.test_steps, "step_seconds": cfg.test_step_seconds}
        if kind == "training":
            return {"base_model": "Qwen/Qwen3-8B", "train_artifact": self.train_artifact, "seed": n,
                    "batch_size": cfg.train_batch_size, "epochs": cfg.train_epochs, "save_every": cfg.save_every,
                    "eval_every": 0}
        if kind == "generation":
            return {"model": "moonshotai/kimi-k2", "prompt": "Teach {{ topic }}.", "output": "completion",
                    "topics": [f"{TOPICS[i % 8]} {n}.{i}" for i in range(cfg.generation_items)], "concurrency": 2}
        return {"source": {"type": "artifact", "artifact_id": self.upload}, "seed": n}

    def _submitter(self) -> None:
        mix = ["training", "test", "generation", "training", "test", "dataset"]
        n = 0
        with httpx.Client(base_url=self._base(), headers=self.headers, timeout=10) as client:
            while not self.stop.is_set():
                rows = self._sql(lambda conn: conn.execute(self._jobs_query("pending", "queued", "running")).all())
                active = len(rows) if rows is not None else self.cfg.active_jobs
                for _ in range(self.cfg.active_jobs - active):
                    kind = mix[n % len(mix)]
                    self.submit(client, kind, self.spec(kind, n))
                    n += 1
                self.stop.wait(0.5)

    def _load(self) -> None:
        interval = self.cfg.get_threads / self.cfg.get_rps
        with httpx.Client(base_url=self._base(), headers=self.headers, timeout=10) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                ids = list(self.jobs)
                if not ids:
                    time.sleep(interval)
                    continue
                phase = self.phase
                start = time.perf_counter()
                try:
                    status: Any = client.get(f"/v1/jobs/{self.rng.choice(ids)}").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if phase is not None and phase == self.phase:
                    self.obs.gets.append((phase, (time.perf_counter() - start) * 1000, status))
                next_at = max(next_at + interval, time.monotonic())
                time.sleep(max(0.0, next_at - time.monotonic()))

    def _monitor(self) -> None:
        """Training progress per lease, sampled from the job row every 0.1 s (bench/chaos_figures.steps_redone)."""
        while not self.done.wait(0.1):
            rows = self._sql(lambda conn: conn.execute(self._jobs_query("running", "queued")).all())
            t = time.time()
            for r in rows or []:
                if r.kind != "training":
                    continue
                sample = (t, r.lease_token, (r.progress or {}).get("done"))
                samples = self.obs.samples.setdefault(r.id, [])
                if not samples or samples[-1][1:] != sample[1:]:
                    samples.append(sample)

    def _thread(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=self._guard(target), args=args, name=target.__name__, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _guard(self, target: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            try:
                target(*args)
            except Exception as exc:
                self.note(f"{target.__name__} stopped: {type(exc).__name__}: {exc}")
        return run

    def note(self, text: str, *, quiet: bool = False) -> None:
        line = f"[+{time.time() - self.t0:6.1f}s] {text}"
        self.obs.notes.append(line)
        if not quiet:
            self.say(line)

    # ---- the run -------------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """An upload and the ChatML dataset every training job trains on (made before any fault)."""
        rows = b"".join(orjson.dumps({"messages": [
            {"role": "user", "content": f"Explain {TOPICS[i % 8]} case {i}."},
            {"role": "assistant", "content": f"Think about {TOPICS[i % 8]} step {i}: what do you notice first?"},
        ]}) + b"\n" for i in range(self.cfg.train_rows))
        with httpx.Client(base_url=self._base(), headers=self.headers, timeout=60) as client:
            upload = client.post("/v1/files", params={"name": "chaos.jsonl"}, content=rows)
            assert upload.status_code == 201, upload.text
            self.upload = upload.json()["id"]
            job_id = self.submit(client, "dataset", {"source": {"type": "artifact", "artifact_id": self.upload}})
            done = client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 60}).json()
        assert done["status"] == "succeeded", done
        self.train_artifact = done["result"]["train_artifact"]

    def run(self) -> Observations:
        self.prepare_data()
        self._thread(self._supervise)
        self._thread(self._monitor)
        self._thread(self._submitter)
        for _ in range(self.cfg.get_threads):
            self._thread(self._load)
        time.sleep(3)  # the first jobs start
        self.phase = "quiet"
        self.say(f"quiet phase: {self.cfg.quiet_seconds:g} s")
        time.sleep(self.cfg.quiet_seconds)
        plan = self._schedule()
        self.say(f"chaos phase: {self.cfg.seconds:g} s, faults {sorted(set(plan))} x {len(plan)}")
        self.phase = "chaos"
        self.chaos_started = time.time()
        faults = threading.Thread(target=self._faults, args=(plan, time.monotonic()), name="faults", daemon=True)
        faults.start()
        faults.join(timeout=self.cfg.seconds + 120)
        self.stop.wait(max(0.0, self.chaos_started + self.cfg.seconds - time.time()))
        self.phase = None
        self.stop.set()
        for thread in self.retiring:
            thread.join(timeout=self.cfg.grace_seconds + 60)  # paused workers resumed, deploys finished
        self.say(f"chaos over after {time.time() - self.chaos_started:.0f} s; {len(self.jobs)} jobs submitted; "
                 f"draining (up to {self.cfg.drain_seconds:g} s)")
        deadline = time.monotonic() + self.cfg.drain_seconds
        while time.monotonic() < deadline:
            rows = self._sql(lambda conn: conn.execute(self._jobs_query("pending", "queued", "running")).all())
            if rows == []:
                break
            time.sleep(1)
        self.say(f"drained after {self.cfg.drain_seconds - (deadline - time.monotonic()):.0f} s")
        self.done.set()
        record = {"faults": self.obs.faults, "cancels": self.obs.cancels, "samples": self.obs.samples,
                  "worker_crashes": self.obs.worker_crashes, "notes": self.obs.notes, "jobs": self.jobs}
        (self.workdir / "logs" / "observations.json").write_bytes(orjson.dumps(record, default=str))
        return self.obs


def run_chaos(config: Config, *, db_url: str, workdir: Path, terminate_backends: Callable[[], int] | None,
              say: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any], dict[str, bool | None]]:
    """A whole run; its figures, the details behind them, and which targets it met."""
    with ChaosRun(config, db_url=db_url, workdir=workdir, terminate_backends=terminate_backends, say=say) as run:
        obs = run.run()
    fig, details = figures(obs)
    met = targets(fig, lease_seconds=config.lease_seconds, reaper_interval_seconds=config.reaper_interval_seconds,
                  heartbeat_seconds=config.heartbeat_seconds)
    return fig, details, met


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """Make a SIGTERM to the bench (a CI timeout) clean up like Ctrl-C does."""
    def handler(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    from bench.common import postgres_database, terminate_backends

    config = Config.from_env()
    db_url = postgres_database("tuneq_chaos")
    started = time.monotonic()
    with _interrupt_on_sigterm(), tempfile.TemporaryDirectory(prefix="tuneq-chaos-") as tmp:
        workdir = Path(os.environ.get("CHAOS_WORKDIR") or tmp)
        logs = workdir / "logs"
        try:
            fig, details, met = run_chaos(config, db_url=db_url, workdir=workdir,
                                          terminate_backends=lambda: terminate_backends(db_url))
        finally:
            if os.environ.get("CHAOS_WORKDIR") is None:  # the temp dir goes: keep the logs, above all on failure
                logs = Path(tempfile.gettempdir()) / "tuneq-chaos-last-logs"
                shutil.rmtree(logs, ignore_errors=True)
                shutil.copytree(workdir / "logs", logs, dirs_exist_ok=True)
    print(f"chaos: {time.monotonic() - started:.0f} s in all; logs in {logs}")
    for line in summary(fig, details, met):
        print(line)
    print(json.dumps(fig))
    failed = [name for name, ok in met.items() if ok is False]
    return 1 if failed and os.environ.get("BENCH_STRICT") == "1" else 0


if __name__ == "__main__":
    sys.exit(main())
