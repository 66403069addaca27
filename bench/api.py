"""GET /v1/jobs/{id} (with its API-key check) against a bare hello-world route in the same app,
side by side in one run, on PostgreSQL. Usage: python bench/api.py [--seconds 5]"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fresh_postgres, load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    db_url = fresh_postgres()
    os.environ["TUNEQ_DATABASE_URL"] = db_url
    os.environ.setdefault("TUNEQ_BROKER_URL", "redis://127.0.0.1:6379/9")
    from app.db import session_scope
    from app.migrate import upgrade
    from app.models import Job
    from app.services import auth

    upgrade(db_url)
    with session_scope() as session:
        team = auth.get_or_create_team(session, "bench")
        _, key = auth.create_key(session, team_id=team.id, rate_limit="1000000/second")  # measure, not refuse
        job = Job(team_id=team.id, kind="test", status="succeeded", spec={"steps": 3}, labels={"bench": "api"},
                  progress={"done": 3, "total": 3, "unit": "steps", "eta_seconds": 0}, result={"steps": 3})
        session.add(job)
        session.flush()
        job_id = job.id

    port = 8765
    env = {**os.environ, "TUNEQ_RUN_REAPER": "0", "TUNEQ_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.api:bench_app", "--factory", "--port", str(port),
         "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"],
        cwd=ROOT, env=env,
    )
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/hello").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        auth_header = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs/{job_id}", headers=auth_header).status_code == 200
        hello = load("127.0.0.1", port, "/hello", connections=args.connections, seconds=args.seconds)
        status = load("127.0.0.1", port, f"/v1/jobs/{job_id}", headers=auth_header,
                      connections=args.connections, seconds=args.seconds)
    finally:
        server.terminate()
        server.wait()
    print(f"hello-world        {hello.summary()}")
    print(f"GET /v1/jobs/{{id}}  {status.summary()}")
    print(json.dumps({"bench": "api", "status_rps": round(status.rps), "hello_rps": round(hello.rps),
                      "status_vs_hello": round(status.rps / hello.rps, 3),
                      "status_p99_ms": round(status.pct(0.99), 2), "hello_p99_ms": round(hello.pct(0.99), 2),
                      "connections": args.connections, "errors": status.errors + hello.errors}))


def bench_app():  # type: ignore[no-untyped-def]
    """The real app plus a bare hello-world route, served by the same process."""
    from app.api.responses import JSON
    from app.main import create_app

    app = create_app()

    @app.get("/hello")
    async def hello() -> JSON:
        return JSON({"hello": "world"})

    return app


if __name__ == "__main__":
    main()
