"""The one place configuration is read. Nothing else touches os.environ."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

JOB_KINDS = ("dataset", "generation", "training", "evaluation", "export")


class GenerationPrice(BaseModel):
    """A model's price in USD per million tokens (TUNEQ_GENERATION_PRICES)."""

    prompt: float = Field(ge=0)
    completion: float = Field(ge=0)


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
    max_streams_per_key: int = 20  # open SSE streams + waits per API key per API process (429 past it)
    # A request body must arrive within this many seconds (408 otherwise); uploads under /v1/files get it
    # as an idle limit between chunks instead.
    body_timeout_seconds: float = 30.0
    # POST /v1/checkpoints/{ref}/chat (app/services/chat.py) samples one reply through Tinker from the API
    # process: it answers 504 past this many seconds, and each API key may call it this often (on top of
    # rate_limit; "" turns it off). Sampling clients stay open per weights path, the most recent few per process.
    chat_timeout_seconds: float = Field(default=60.0, gt=0)
    chat_rate_limit: str = "20/minute"
    # Rate limits and quotas (app/services/ratelimit.py), counted in the broker's Redis so every API process
    # shares them; "" turns a limit off. Requests per API key (a key's `rate_limit` column overrides it):
    rate_limit: str = "50/second;2000/minute"
    # Failed key lookups (unknown or revoked keys) per client address and per key prefix; past them, keys not
    # verified before are refused with 429 without a SQL lookup (a flood of made-up keys costs no SQL).
    key_lookup_rate_limit: str = "10/second;100/minute"
    key_lookup_prefix_rate_limit: str = "10/minute"
    # GET /metrics needs `Authorization: Bearer <token>`; unset, /metrics answers only clients on loopback.
    metrics_token: SecretStr | None = None
    # JSON {kind: n}: at most n RUNNING jobs of that kind per team; more stay queued (checked at claim).
    max_running_per_team: dict[str, int] = {}
    # A generation spec without max_cost_usd gets this one; a team's unfinished generation jobs may together
    # budget at most the team's cap (team.limits["generation_max_cost_usd"], default the setting below).
    generation_default_max_cost_usd: float | None = 20.0
    generation_team_max_cost_usd: float | None = 200.0
    # Estimates (app/services/estimates.py: dry runs, and every job's `estimate`). No prices ship with tuneq:
    # without an entry for the model, cost_usd / duration_seconds are null and a note says which setting to set.
    # JSON {base_model: USD per million training tokens (every token sent)}:
    training_price_per_mtok: dict[str, float] = {}
    training_tokens_per_second: dict[str, float] = {}  # JSON {base_model: training tokens/s you measured}
    # A dry run renders every row of a training artifact up to this size (exact counts); larger artifacts, and
    # every created job, use the dataset job's token statistics instead.
    estimate_scan_max_bytes: int = 256 * 1024**2
    # Generation: completion tokens assumed per item when neither the spec nor its preset sets max_tokens.
    estimate_completion_tokens: int = 1024
    enable_test_jobs: bool = False  # accept kind "test" (tests and benchmarks only)
    max_upload_bytes: int = 2 * 1024**3
    # Outputs of failed and cancelled jobs (rows and files, and any attempt folders left on disk) are deleted
    # this many days after the job ended, by a sweep run from the reaper's thread at most every
    # retention_sweep_seconds (app/services/retention.py). 0 or empty: kept forever. Never an artifact an
    # unfinished job uses, an upload, or a succeeded job's output.
    failed_output_retention_days: Annotated[float, BeforeValidator(lambda v: 0 if v in ("", None) else v),
                                            Field(ge=0)] = 7.0
    retention_sweep_seconds: float = Field(default=3600.0, gt=0)
    upload_quota_bytes: int = 50 * 1024**3  # a team's uploaded files, in total
    preview_max_row_bytes: int = 1024**2  # preview/render answer 422 for a longer row (download it instead)
    local_datasets_dir: Path | None = None  # dataset jobs may read Hub-shaped directories under it
    # Generation prompt templates (docs/architecture.md, "Pipelines and resumability"): each render, at submit
    # and per item in the worker, stops with a clear error past any of these bounds.
    template_max_output_chars: int = 200_000  # rendered text, and the size of any value a template builds
    template_max_steps: int = 100_000  # loop iterations + calls + range() lengths, summed over one render
    template_max_seconds: float = 0.5  # one render's time (a normal prompt takes well under a millisecond)
    # Logs (app/logs.py): one JSON object per line, or a readable line when stderr is a terminal ("auto");
    # "json" or "console" force one. Keys and the secrets below are masked in either.
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    # Prometheus multiprocess mode (app/telemetry.py): every process of one machine writes its counters here and
    # any API process sums them. `tuneq api|run|worker` set it to <var_dir>/metrics when unset and empty it at
    # start; unset in a process started otherwise (one uvicorn process): counters stay in that process.
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR"))

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
    stall_seconds_export: float = 900.0
    stall_seconds_test: float = 60.0
    # On SIGTERM a worker gives its running jobs this long to checkpoint and hand back, then cancels what still
    # runs and returns those messages to the broker (compose's stop_grace_period must exceed it).
    shutdown_grace_seconds: float = 30.0
    # A worker's main process touches this file every few seconds while its consumer loop runs; a healthcheck
    # calls it unhealthy when the file is stale (docker-compose.yml). Unset: no file.
    worker_health_file: Path | None = None
    # Extra Celery settings for API and workers alike, applied over ours (dicts merged one level), e.g.
    # {"broker_transport_options": {"global_keyprefix": "tuneq:"}, "task_routes": {...}}.
    celery_options: dict[str, Any] = {}
    # How long a worker retries a write while the database is away before leaving the job to its lease.
    db_retry_seconds: float = 60.0
    sql_connect_timeout_seconds: float = 5.0
    # Connections per API or worker process, per pool (SQLAlchemy's; the asyncpg pool of GET /v1/jobs/{id} gets
    # sql_pool_size + sql_max_overflow), and how long a request waits for a free one before a 503 + Retry-After.
    sql_pool_size: int = Field(default=10, ge=1)
    sql_max_overflow: int = Field(default=20, ge=0)
    sql_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    sql_statement_timeout_seconds: float = 60.0

    # Webhooks (docs/architecture.md, "Webhooks"): a job's or pipeline's `webhook_url` gets a Standard Webhooks
    # POST signed with this secret ("whsec_" + base64); unset, webhook_url is refused at submit (422).
    webhook_secret: Annotated[SecretStr | None, BeforeValidator(lambda v: None if v in ("", None) else v)] = None
    # Private, loopback and shared addresses are refused unless allowed here; link-local (cloud metadata),
    # multicast and unspecified addresses only through webhook_allowed_networks (CIDRs, e.g. ["10.0.0.0/8"]).
    webhook_allow_private: bool = False
    webhook_allowed_networks: list[str] = []
    webhook_timeout_seconds: float = 10.0  # each phase of one POST (connect, write, read), and its DNS lookup
    webhook_max_attempts: int = Field(default=8, ge=1)  # then the delivery is marked failed
    webhook_retry_base_seconds: float = 10.0  # attempt n waits base × 2^(n-1) (± jitter), at most:
    webhook_retry_max_seconds: float = 3600.0
    webhook_interval_seconds: float = 1.0  # how often each worker's main process looks for due deliveries

    # External services
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openrouter_app_name: str = "tuneq"
    openrouter_referer: str | None = None
    # Requests per second for the server's OpenRouter key, shared by every job and worker through the broker's
    # Redis (a job's requests_per_second only lowers its share); unset: the key is not paced.
    openrouter_requests_per_second: float | None = Field(default=None, gt=0)
    # Replies without usage.cost are priced by their tokens: this table (USD per million tokens,
    # {"model": {"prompt": 0.6, "completion": 2.5}}) wins over the provider's GET /models, which each worker
    # process keeps this long.
    generation_prices: dict[str, GenerationPrice] = {}
    openrouter_models_cache_seconds: float = Field(default=3600.0, ge=0)

    # Also read as TINKER_API_BASE, the name the training scripts this service replaces use.
    tinker_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("TUNEQ_TINKER_BASE_URL", "TINKER_API_BASE"))
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
