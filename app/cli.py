"""The `tuneq` command: api, worker, migrate, keys, and `run` (the whole embedded stack)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

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
    _private_var_dir()
    upgrade(settings.resolved_database_url)
    typer.echo("database is up to date")


@cli.command()
def api(workers: int = typer.Option(1, help="uvicorn worker processes")) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from app.logs import configure_logging

    _metrics_dir()
    settings = get_settings()
    configure_logging(settings)  # uvicorn's own lines (and its supervisor's, with --workers) as ours
    uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port, workers=workers,
                log_level=settings.log_level.lower(), access_log=False, log_config=None)


@cli.command()
def worker(
    queues: str = typer.Option(",".join(QUEUES), help="comma-separated queues (job kinds) to serve"),
    concurrency: int = typer.Option(0, help="processes; 0 = TUNEQ_WORKER_CONCURRENCY"),
    name: str = typer.Option("", help="Celery node name; default tuneq-<random>@<host>, unique per worker"),
) -> None:
    """Run a Celery worker for the given job kinds."""
    settings = get_settings()
    argv = worker_argv(queues, concurrency or settings.worker_concurrency, name=name or None)
    os.execvp(sys.executable, [sys.executable, *argv])


def worker_argv(queues: str, concurrency: int, *, name: str | None = None) -> list[str]:
    """The `celery worker` command line. Each worker gets its own node name: Celery's remote control and
    monitoring (Flower) tell workers apart by it, and two live workers with one name collide."""
    node = name or f"tuneq-{uuid.uuid4().hex[:8]}@%h"
    return ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues, "-c", str(concurrency),
            "--loglevel", get_settings().log_level, "--without-gossip", "--without-mingle", "-n", node]


@keys.command("create")
def keys_create(
    team: str = typer.Option(..., help="team name (created if new)"),
    name: str = "",
    scope: list[str] = typer.Option(  # noqa: B008 (typer's way of declaring a repeatable option)
        ["jobs:read", "jobs:write"],
        help="a scope the key gets (repeat for several): jobs:read (every GET), jobs:write (submit, cancel, "
             "resume, upload), admin (key management)"),
    rate_limit: str = typer.Option("", help="this key's request limit, e.g. '5/second;100/minute' "
                                            "(default: TUNEQ_RATE_LIMIT)"),
) -> None:
    """Create an API key for a team and print it once."""
    from app.db import session_scope
    from app.errors import TuneqError
    from app.services import auth
    from app.services.ratelimit import parse_limits

    try:
        parse_limits(rate_limit)
    except ValueError:
        raise typer.BadParameter(f"'{rate_limit}' is not a rate limit; write e.g. '5/second;100/minute'",
                                 param_hint="--rate-limit") from None
    try:
        with session_scope() as session:
            t = auth.get_or_create_team(session, team)
            key, plain = auth.create_key(session, team_id=t.id, name=name, scopes=tuple(dict.fromkeys(scope)),
                                         rate_limit=rate_limit or None)
    except TuneqError as exc:
        raise typer.BadParameter(exc.detail, param_hint="--scope") from None
    typer.echo(f"team {team}: key {key.id} (scopes: {', '.join(key.scopes)})\n{plain}")


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


def shutdown_grace_seconds() -> float:
    """How long a stopping worker gives its running jobs to checkpoint and hand back (workers/celery_app.py)."""
    return get_settings().shutdown_grace_seconds


@dataclass
class Supervised:
    """A child process `tuneq run` keeps running, restarting it with a growing pause when it exits on its own,
    as compose (`restart: unless-stopped`) or systemd (`Restart=on-failure`) would."""

    name: str
    start: Callable[[], subprocess.Popen[bytes] | None]
    stop_timeout: float = 15.0
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # exits in a row that came soon after a start
    restart_at: float | None = None

    def launch(self) -> None:
        self.started_at, self.restart_at = time.monotonic(), None
        try:
            self.proc = self.start()
        except Exception as exc:  # e.g. Redis did not come up: try again after a pause
            typer.echo(f"tuneq run: the {self.name} did not start ({exc})", err=True)
            self.proc = None
            self._schedule_restart(self.started_at)

    def check(self) -> None:
        """Restart the process when it has exited and its pause is over."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                typer.echo(f"tuneq run: starting the {self.name} again")
                self.launch()
            return
        code = self.proc.poll() if self.proc is not None else None
        if code is None:
            return
        typer.echo(f"tuneq run: the {self.name} exited (code {code})", err=True)
        self._schedule_restart(now)

    def _schedule_restart(self, now: float) -> None:
        self.failures = self.failures + 1 if now - self.started_at < 60 else 1
        pause = min(30.0, 0.5 * 2 ** (self.failures - 1))  # 0.5 s, 1 s, 2 s … 30 s while it keeps failing
        typer.echo(f"tuneq run: restarting the {self.name} in {pause:g} s", err=True)
        self.restart_at = now + pause

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            typer.echo(f"tuneq run: the {self.name} did not stop within {self.stop_timeout:g} s; killing it",
                       err=True)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    # Its own session: a Ctrl-C in the terminal reaches `tuneq run` only, which stops the children in order
    # (a worker's SIGINT would start a second, different shutdown).
    return subprocess.Popen([sys.executable, *args], start_new_session=True)


@cli.command()
def run() -> None:
    """The embedded stack: Redis (if no broker is configured), migrations, API and one worker, restarted when
    they exit unexpectedly. Ctrl-C or SIGTERM stops everything."""
    from app.embedded import start_redis

    settings = get_settings()
    _private_var_dir()
    _metrics_dir()  # the API and worker it starts share it
    services: list[Supervised] = []
    if not settings.broker_url:
        redis = Supervised("embedded Redis", lambda: start_redis(settings.embedded_redis_socket,
                                                                  settings.var_dir / "redis"))
        redis.launch()
        services.append(redis)
    migrate()
    key = _first_key()
    base = f"http://{settings.host}:{settings.port}"
    services.append(Supervised("API", lambda: _spawn(["-m", "app.cli", "api"])))
    services.append(Supervised("worker", lambda: _spawn(["-m", "app.cli", "worker"]),
                               stop_timeout=shutdown_grace_seconds() + 15))
    for service in services[-2:]:
        service.launch()
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
    while not stop:
        for service in services:
            service.check()
        time.sleep(0.2)
    typer.echo("tuneq run: stopping")
    for service in reversed(services):  # the worker first (it hands its jobs back), Redis last
        service.terminate()
        service.wait()
    typer.echo("stopped")


def _metrics_dir() -> None:
    """Prometheus multiprocess mode for this process and those it starts (docs/architecture.md, "Logs and
    metrics"): unless PROMETHEUS_MULTIPROC_DIR is set already (by the operator, or by the `tuneq run` that
    started us), use <var_dir>/metrics, emptied first, since counts an earlier run left would be summed in.
    Set before anything imports prometheus_client, which reads it once. Workers count nothing there (job facts
    are read from SQL), so `tuneq worker` leaves the directory alone: emptying it under a running API would
    unlink the files that API still writes to."""
    settings = get_settings()
    if settings.prometheus_multiproc_dir is not None:
        return
    _private_var_dir()
    path = (settings.var_dir / "metrics").resolve()
    path.mkdir(exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    get_settings.cache_clear()


def _private_var_dir() -> None:
    var_dir = get_settings().var_dir
    var_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    var_dir.chmod(0o700)


def main() -> None:
    # Whatever tuneq writes (SQLite file, artifacts, the embedded Redis's socket) is its own: 0600 files, 0700
    # folders (docs/architecture.md, "Artifacts").
    os.umask(0o077)
    cli()


if __name__ == "__main__":
    main()
