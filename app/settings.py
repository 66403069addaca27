"""The one place configuration is read. Nothing else touches os.environ."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

JOB_KINDS = ("dataset", "generation", "training", "evaluation")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEQ_", env_file=".env", extra="ignore")

    # Where state lives. The defaults are the embedded set-up `make run` uses.
    var_dir: Path = Path("var")
    database_url: str = ""  # default: sqlite:///<var_dir>/tuneq.db
    broker_url: str = ""  # default: the embedded Redis on <var_dir>/redis.sock
    artifact_dir: Path | None = None  # default: <var_dir>/artifacts

    # API
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1_000_000
    key_cache_seconds: float = 5.0  # a revoked key stops working within this many seconds
    enable_test_jobs: bool = False  # accept kind "test" (tests and benchmarks only)
    max_upload_bytes: int = 2 * 1024**3
    local_datasets_dir: Path | None = None  # dataset jobs may read Hub-shaped directories under it
    log_level: str = "INFO"

    # Delivery, leases and preemption (docs/architecture.md, "Lifecycle")
    heartbeat_seconds: float = 5.0
    lease_seconds: float = 30.0  # a running job whose heartbeat is older than this is taken over
    # A queued job's wake-up is sent again when it waited this long while its broker queue was empty.
    requeue_after_seconds: float = 15.0
    reaper_interval_seconds: float = 5.0
    max_attempts: int = 3  # the job's own failures
    max_preemptions: int = 25  # the infrastructure's interruptions (lost worker, shutdown, stall)
    retry_base_seconds: float = 10.0  # a retried job waits base × 2^(attempt-1) (± jitter), at most:
    retry_max_seconds: float = 600.0
    run_reaper: bool = True  # run the reaper in this process (API and worker); one runs at a time
    worker_concurrency: int = 2
    # A running job that reports no progress for this long is preempted as stalled (a job may set
    # `stall_seconds`). Long enough for the slowest honest step of each kind.
    stall_seconds_dataset: float = 900.0
    stall_seconds_generation: float = 600.0
    stall_seconds_training: float = 1800.0
    stall_seconds_evaluation: float = 900.0
    stall_seconds_test: float = 60.0
    # On SIGTERM a worker gives its running jobs this long to checkpoint and hand back, then cancels what still
    # runs and returns those messages to the broker (compose's stop_grace_period must exceed it).
    shutdown_grace_seconds: float = 30.0
    # Extra Celery settings for API and workers alike, applied over ours (dicts merged one level), e.g.
    # {"broker_transport_options": {"global_keyprefix": "tuneq:"}, "task_routes": {...}}.
    celery_options: dict[str, Any] = {}
    # How long a worker retries a write while the database is away before leaving the job to its lease.
    db_retry_seconds: float = 60.0
    sql_connect_timeout_seconds: float = 5.0
    sql_statement_timeout_seconds: float = 60.0

    # External services
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openrouter_app_name: str = "tuneq"
    openrouter_referer: str | None = None

    tinker_base_url: str | None = None
    tinker_fake: str | None = None  # tests only: "module:factory" of a fake Tinker service client
    tinker_fake_config: str | None = None  # tests only: JSON config for that factory
    supported_base_models: list[str] = [
        "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "Qwen/Qwen3-14B",
        "Qwen/Qwen3-32B", "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B",
    ]

    # Secrets for external services: plain names, as those services document them.
    tinker_api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("TINKER_API_KEY"))
    openrouter_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENROUTER_API_KEY")
    )
    hf_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("HF_TOKEN"))

    def stall_limit(self, kind: str) -> float:
        return float(getattr(self, f"stall_seconds_{kind}", self.stall_seconds_training))

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.var_dir / 'tuneq.db').resolve()}"

    @property
    def embedded_redis_socket(self) -> Path:
        return (self.var_dir / "redis.sock").resolve()

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"redis+socket://{self.embedded_redis_socket}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.var_dir / "artifacts").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
