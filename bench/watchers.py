"""N concurrent SSE watchers spread over M running jobs that emit events, against ONE real API process (uvicorn)
on PostgreSQL with the real Redis. Events are written the way a worker writes them (transitions.fenced_update);
delivery = from the emitting transaction's commit to a client reading the event, on the same host clock.

Usage: python bench/watchers.py [--watchers 1000] [--jobs 10] [--rate 50] [--seconds 15] [--clients 4]
       [--app app.main:create_app]
Last line: {"bench": "watchers", "watchers": N, "jobs": M, "events_per_s": …, "api_cores": …, "delivery_p50_ms": …,
"delivery_p99_ms": …}. Target: 1,000 watchers cost ≤ 0.3 core, delivery p99 ≤ 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import postgres_database  # noqa: E402

BENCH_DB = "tuneq_bench_watchers"
PORT = 8767


# ---- clients: raw HTTP/1.1 SSE readers, so the client side stays cheap --------------------------------------


async def _watch(port: int, path: str, key: str, received: dict[int, list[float]], connected: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        length = next((int(h[15:]) for h in head.split(b"\r\n") if h[:15].lower() == b"content-length:"), 0)
        raise RuntimeError(f"stream refused: {head[:12]!r} {await reader.readexactly(length)!r}")
    with connected.get_lock():
        connected.value += 1
    buffer = b""
    try:
        while True:  # chunked transfer encoding; SSE events end with a blank line
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                return
            buffer += (await reader.readexactly(size + 2))[:-2]
            now = time.time()
            *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
            for raw in events:
                for line in raw.split(b"\n"):
                    if line.startswith(b"data: "):
                        n = orjson.loads(line[6:])["data"].get("n")
                        if n is not None:
                            received.setdefault(n, []).append(now)
    finally:
        writer.close()


def _client(port: int, key: str, paths: list[str], connected: Any, results: Any) -> None:
    import uvloop

    received: dict[int, list[float]] = {}

    async def run() -> None:
        await asyncio.gather(*(_watch(port, p, key, received, connected) for p in paths))

    uvloop.run(run())
    results.put(received)


# ---- the emitting side --------------------------------------------------------------------------------------


def _running_jobs(team_id: str, count: int) -> list[tuple[str, int]]:
    from app.db import run_statement, session_scope
    from app.models import Job
    from app.services import transitions

    jobs = []
    for _ in range(count):
        with session_scope() as session:
            job = Job(team_id=team_id, kind="test", status="queued", spec={"steps": 1})
            session.add(job)
            session.flush()
            job_id = job.id
        claim = run_statement(lambda c, j=job_id: transitions.claim(c, j, owner="bench", lease_seconds=3600))
        assert claim is not None
        jobs.append((job_id, claim.token))
    return jobs


def _emit(jobs: list[tuple[str, int]], rate: float, seconds: float, committed: dict[int, float]) -> None:
    """`rate` events per second in all, round-robin over the jobs; the wall time each commit returned."""
    from app.db import run_statement
    from app.services import transitions

    start = time.monotonic()
    n = 0
    while (due := start + n / rate) < start + seconds:
        time.sleep(max(0.0, due - time.monotonic()))
        job_id, token = jobs[n % len(jobs)]
        run_statement(lambda c, j=job_id, t=token, k=n: transitions.fenced_update(
            c, j, t, {}, [("step", {"n": k, "stamped": time.time()})]))
        committed[n] = time.time()
        n += 1


def _finish(jobs: list[tuple[str, int]]) -> None:
    from app.db import run_statement
    from app.services import transitions

    for job_id, token in jobs:
        run_statement(lambda c, j=job_id, t=token: transitions.finish(c, j, t, "succeeded", result={}))


def _pct(data: list[float], p: float) -> float:
    data = sorted(data)
    return data[min(len(data) - 1, int(len(data) * p))] if data else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0, help="events per second over all jobs")
    parser.add_argument("--seconds", type=float, default=15.0, help="the measured window")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--app", default="app.main:create_app", help="the API factory (to compare variants)")
    args = parser.parse_args()

    db_url = postgres_database(BENCH_DB)
    os.environ.update({"TUNEQ_DATABASE_URL": db_url, "TUNEQ_LOG_LEVEL": "WARNING",
                       "TUNEQ_BROKER_URL": os.environ.get("TUNEQ_BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")})
    from app.db import session_scope
    from app.migrate import upgrade
    from app.services import auth

    upgrade(db_url)
    with session_scope() as session:
        team = auth.get_or_create_team(session, "bench")
        _, key = auth.create_key(session, team_id=team.id)
        team_id = team.id
    jobs = _running_jobs(team_id, args.jobs)

    env = {**os.environ, "TUNEQ_RUN_REAPER": "0", "TUNEQ_MAX_STREAMS_PER_KEY": str(args.watchers + 10),
           "TUNEQ_RATE_LIMIT": ""}  # 1000 streams open at once from one key: not what this measures
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", args.app, "--factory", "--port", str(PORT), "--log-level", "warning",
         "--no-access-log", "--loop", "uvloop", "--http", "httptools", "--backlog", "4096"],
        cwd=ROOT, env=env,
    )
    clients: list[mp.Process] = []
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        connected = mp.Value("i", 0)
        results: Any = mp.Queue()
        paths = [f"/v1/jobs/{jobs[i % len(jobs)][0]}/events" for i in range(args.watchers)]
        for c in range(args.clients):
            proc = mp.Process(target=_client, args=(PORT, key, paths[c::args.clients], connected, results))
            proc.start()
            clients.append(proc)
        deadline = time.monotonic() + 120
        while connected.value < args.watchers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {connected.value} of {args.watchers} watchers connected")
            time.sleep(0.1)
        time.sleep(2.0)  # every stream past its replay
        api = psutil.Process(server.pid)
        procs = [psutil.Process(p.pid) for p in clients]
        api_before, clients_before = api.cpu_times(), [p.cpu_times() for p in procs]
        started = time.monotonic()
        committed: dict[int, float] = {}
        _emit(jobs, args.rate, args.seconds, committed)
        time.sleep(1.0)  # the last events' delivery
        elapsed = time.monotonic() - started
        api_after, clients_after = api.cpu_times(), [p.cpu_times() for p in procs]
        _finish(jobs)
        received: dict[int, list[float]] = {}
        for _ in clients:
            for n, times in results.get(timeout=120).items():
                received.setdefault(n, []).extend(times)
        for proc in clients:
            proc.join(30)
    finally:
        for proc in clients:
            if proc.is_alive():
                proc.terminate()
        server.terminate()
        server.wait()

    per_watcher = {n: len(received.get(n, [])) for n in committed}
    expected = args.watchers // args.jobs
    delivered = sum(per_watcher.values())
    missing = sum(max(0, expected - c) for c in per_watcher.values())
    delays = [(t - committed[n]) * 1000 for n, times in received.items() if n in committed for t in times]
    api_cores = (api_after.user + api_after.system - api_before.user - api_before.system) / elapsed
    client_cores = sum(a.user + a.system - b.user - b.system for a, b in zip(clients_after, clients_before,
                                                                               strict=True)) / elapsed
    print(f"{args.watchers} watchers on {args.jobs} jobs, {len(committed)} events in {args.seconds:g} s "
          f"({args.app}): {delivered} deliveries, {missing} missing; API {api_cores:.3f} cores, "
          f"clients {client_cores:.3f} cores over {args.clients} processes; delivery p50 {_pct(delays, 0.5):.1f} ms "
          f"p99 {_pct(delays, 0.99):.1f} ms max {max(delays, default=float('nan')):.1f} ms")
    print(json.dumps({"bench": "watchers", "watchers": args.watchers, "jobs": args.jobs,
                      "events_per_s": round(len(committed) / args.seconds, 1), "api_cores": round(api_cores, 3),
                      "delivery_p50_ms": round(_pct(delays, 0.5), 1), "delivery_p99_ms": round(_pct(delays, 0.99), 1),
                      "deliveries": delivered, "missing": missing, "client_cores": round(client_cores, 3)}))


if __name__ == "__main__":
    main()
