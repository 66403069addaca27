"""The `tuneq` command: api, worker, migrate, keys, and `run` (the whole embedded stack)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import typer

from app.queue import QUEUES
from app.settings import get_settings

cli = typer.Typer(help="tuneq: fine-tuning jobs for Qwen3 on Tinker.", no_args_is_help=True)
keys = typer.Typer(help="Manage API keys.", no_args_is_help=True)
cli.add_typer(keys, name="keys")


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    from app.migrate import upgrade

    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    typer.echo("database is up to date")


@cli.command()
def api(workers: int = typer.Option(1, help="uvicorn worker processes")) -> None:
    """Serve the HTTP API."""
    import uvicorn

    settings = get_settings()
    uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port, workers=workers,
                log_level=settings.log_level.lower(), access_log=False)


@cli.command()
def worker(
    queues: str = typer.Option(",".join(QUEUES), help="comma-separated queues (job kinds) to serve"),
    concurrency: int = typer.Option(0, help="processes; 0 = TUNEQ_WORKER_CONCURRENCY"),
) -> None:
    """Run a Celery worker for the given job kinds."""
    settings = get_settings()
    os.execvp(sys.executable, [sys.executable, *worker_argv(queues, concurrency or settings.worker_concurrency)])


def worker_argv(queues: str, concurrency: int) -> list[str]:
    return ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues, "-c", str(concurrency),
            "--loglevel", get_settings().log_level, "--without-gossip", "--without-mingle", "-n", "tuneq@%h"]


@keys.command("create")
def keys_create(team: str = typer.Option(..., help="team name (created if new)"), name: str = "") -> None:
    """Create an API key for a team and print it once."""
    from app.db import session_scope
    from app.services import auth

    with session_scope() as session:
        t = auth.get_or_create_team(session, team)
        key, plain = auth.create_key(session, team_id=t.id, name=name)
    typer.echo(f"team {team}: key {key.id}\n{plain}")


@keys.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key (it stops working within TUNEQ_KEY_CACHE_SECONDS)."""
    from app.db import session_scope
    from app.services import auth

    with session_scope() as session:
        auth.revoke_key(session, key_id=key_id)
    typer.echo(f"revoked {key_id}")


def _first_key() -> str | None:
    """Create team 'default' and a key on first start; None when one exists already."""
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import ApiKey
    from app.services import auth

    with session_scope() as session:
        team = auth.get_or_create_team(session, "default")
        if session.execute(select(ApiKey.id).where(ApiKey.team_id == team.id)).first():
            return None
        return auth.create_key(session, team_id=team.id, name="first key")[1]


@cli.command()
def run() -> None:
    """The embedded stack: Redis (if no broker is configured), migrations, API and one worker."""
    from app.embedded import start_redis

    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    if not settings.broker_url:
        redis = start_redis(settings.embedded_redis_socket, settings.var_dir / "redis")
        if redis:
            procs.append(redis)
    migrate()
    key = _first_key()
    base = f"http://{settings.host}:{settings.port}"
    procs.append(subprocess.Popen([sys.executable, "-m", "app.cli", "api"]))
    procs.append(subprocess.Popen([sys.executable, *worker_argv(",".join(QUEUES), settings.worker_concurrency)]))
    if key:
        typer.echo(f"\nYour API key (shown once; keep it):\n  {key}\n\nTry:\n"
                   f"  curl -s {base}/v1/jobs -H 'Authorization: Bearer {key}'\n")
    else:
        typer.echo(f"\nAPI on {base} (use your key; make another with `tuneq keys create --team default`)\n")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stop and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
    typer.echo("stopped")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
