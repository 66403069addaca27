"""A short chaos run (the harness of bench/chaos.py) on the session's kind of database: a few kill -9s, a Redis
restart, a paused worker, a cancel and, on PostgreSQL, a termination of the database's backends, while a mix
of jobs runs. Deselect with `-m "not chaos"`.

It runs its own stack — API, two workers, a private Redis (a restart must not touch the session's broker) —
on its own database of the session's kind (a fresh SQLite file, or a `<name>_chaos` database on the session's
PostgreSQL server), so the session stack's reaper never adopts its jobs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.chaos import Config, run_chaos

pytestmark = pytest.mark.chaos

SHORT = Config(
    seconds=18, quiet_seconds=2, drain_seconds=25, kills=2, redis_restarts=1, pg_terminations=1, sigterms=0,
    sigstops=1, cancels=1, workers=2, active_jobs=3, heartbeat_seconds=0.5, lease_seconds=3,
    reaper_interval_seconds=0.5, requeue_after_seconds=4, grace_seconds=3, test_steps=12, test_step_seconds=0.3,
    train_rows=64, train_epochs=1, save_every=3, step_latency=0.1, generation_items=20, provider_latency=0.1,
    seed=1,
)


def _database(tmp_path: Path) -> tuple[str, bool]:
    """A fresh database of the session's kind; whether it is PostgreSQL."""
    session_url = os.environ.get("TUNEQ_TEST_DATABASE_URL", "")
    if session_url.startswith("postgresql"):
        from sqlalchemy.engine import make_url

        from bench.common import postgres_database

        return postgres_database(f"{make_url(session_url).database}_chaos", server_url=session_url), True
    return f"sqlite:///{tmp_path / 'chaos.db'}", False


def test_jobs_survive_a_short_chaos_run(tmp_path: Path) -> None:
    from bench.common import terminate_backends

    db_url, postgres = _database(tmp_path)
    fig, details, met = run_chaos(SHORT, db_url=db_url, workdir=tmp_path,
                                  terminate_backends=(lambda: terminate_backends(db_url)) if postgres else None)
    print(fig, {k: v for k, v in details.items() if v}, sep="\n")
    assert fig["faults"].get("kill") == SHORT.kills and fig["faults"].get("redis_restart") == 1
    assert fig["jobs"] >= 8 and fig["succeeded"] > 0
    assert fig["lost"] == 0, details["lost"]
    assert fig["double_terminal"] == 0, details["double_terminal"]
    assert fig["zombie_writes_accepted"] == 0, details["zombies"]
    assert fig["failed_by_infrastructure"] == 0, details["infra_failures"]
    # Interruptions by the infrastructure are preemptions: they spend no attempt, and training resumes from its
    # last checkpoint without applying a batch twice.
    assert fig["attempts_spent_by_infrastructure"] == 0, details
    assert fig["training_batches_applied_twice"] == 0, details
    assert fig["training_steps_redone_max"] <= SHORT.save_every, details
