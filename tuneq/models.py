"""The API's schemas as TypedDicts. GENERATED from the server's /openapi.json by tuneq/codegen.py: do not edit;
regenerate with `python -m tuneq.codegen URL_OR_FILE > tuneq/models.py`."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict


class AdamSpec(TypedDict):
    beta1: NotRequired[float]
    beta2: NotRequired[float]
    eps: NotRequired[float]
    weight_decay: NotRequired[float]
    grad_clip_norm: NotRequired[float]


class ArtifactList(TypedDict):
    data: list[ArtifactOut]
    has_more: bool
    next_cursor: str | None


class ArtifactOut(TypedDict):
    id: str
    job_id: str | None
    kind: str
    name: str
    format: str
    status: str
    rows: int | None
    bytes: int | None
    sha256: str | None
    meta: dict[str, Any]
    labels: dict[str, str]
    created_at: str | None


class ArtifactPatch(TypedDict):
    name: NotRequired[str | None]
    labels: NotRequired[dict[str, str | None] | None]


class ChatMessage(TypedDict):
    role: Literal['assistant']
    content: str
    thinking: str | None


class ChatRequest(TypedDict):
    messages: list[dict[str, Any]]
    max_tokens: NotRequired[int]
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    seed: NotRequired[int | None]
    stop: NotRequired[list[str]]
    enable_thinking: NotRequired[bool]


class ChatResponse(TypedDict):
    model: str
    message: ChatMessage
    finish_reason: Literal['stop', 'length']
    usage: ChatUsage


class ChatUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int


class CheckpointExportCreate(TypedDict):
    labels: NotRequired[dict[str, str]]
    depends_on: NotRequired[list[str]]
    max_attempts: NotRequired[int | None]
    stall_seconds: NotRequired[float | None]
    webhook_url: NotRequired[str | None]


class CheckpointOut(TypedDict):
    id: str
    step: int
    kind: str
    uri: str
    sampler_uri: NotRequired[str | None]
    next_step: int
    loss: NotRequired[float | None]
    val_loss: NotRequired[float | None]
    eval_loss: NotRequired[float | None]
    data: dict[str, Any]
    created_at: str | None


class CheckpointsPage(TypedDict):
    data: list[CheckpointOut]
    has_more: bool
    next_cursor: str | None


class ColumnMapping(TypedDict):
    messages: NotRequired[str | None]
    role_map: NotRequired[dict[str, str] | None]
    role_key: NotRequired[str | None]
    content_key: NotRequired[str | None]
    columns: NotRequired[list[ColumnRole] | None]


class ColumnRole(TypedDict):
    column: str
    role: Literal['system', 'user', 'assistant']


class DatasetJobCreate(TypedDict):
    labels: NotRequired[dict[str, str]]
    depends_on: NotRequired[list[str]]
    max_attempts: NotRequired[int | None]
    stall_seconds: NotRequired[float | None]
    webhook_url: NotRequired[str | None]
    kind: Literal['dataset']
    spec: DatasetSpec


class DatasetSpec(TypedDict):
    source: NotRequired[HubSource | LocalSource | FileSource | None]
    sources: NotRequired[list[HubMixSource | LocalMixSource | FileMixSource] | None]
    shape: NotRequired[Literal['auto', 'messages', 'sharegpt', 'alpaca', 'prompt_completion', 'question_answer'] | ColumnMapping]
    system_prompt: NotRequired[str | None]
    system_prompt_mode: NotRequired[Literal['add', 'replace']]
    dedupe: NotRequired[bool]
    min_turns: NotRequired[int]
    max_tokens: NotRequired[int | None]
    truncate: NotRequired[bool]
    train_on: NotRequired[Literal['all_assistant', 'last_assistant']]
    enable_thinking: NotRequired[bool]
    shuffle: NotRequired[bool]
    seed: NotRequired[int]
    validation_fraction: NotRequired[float | None]
    validation_rows: NotRequired[int | None]
    max_examples: NotRequired[int | None]


class DryRun(TypedDict):
    dry_run: Literal[True]
    kind: str
    spec: dict[str, Any]
    depends_on: list[str]
    estimate: dict[str, Any] | None


class EvaluationJobCreate(TypedDict):
    labels: NotRequired[dict[str, str]]
    depends_on: NotRequired[list[str]]
    max_attempts: NotRequired[int | None]
    stall_seconds: NotRequired[float | None]
    webhook_url: NotRequired[str | None]
    kind: Literal['evaluation']
    spec: EvaluationSpec


class EvaluationSpec(TypedDict):
    base_model: NotRequired[str]
    eval_artifact: str | OutputRef
    checkpoints: NotRequired[list[str | OutputRef]]
    training_job: NotRequired[str | OutputRef | None]
    include_base: NotRequired[bool]
    max_examples: NotRequired[int]
    samples: NotRequired[int]
    max_tokens: NotRequired[int]
    temperature: NotRequired[float]
    max_length: NotRequired[int]
    train_on: NotRequired[Literal['all_assistant', 'last_assistant']]
    enable_thinking: NotRequired[bool]
    judge: NotRequired[JudgeSpec | None]


class EventList(TypedDict):
    data: list[EventRead]
    has_more: bool
    next_cursor: int | None


class EventRead(TypedDict):
    seq: int
    type: str
    attempt: int
    data: dict[str, Any]
    created_at: str


class ExportJobCreate(TypedDict):
    labels: NotRequired[dict[str, str]]
    depends_on: NotRequired[list[str]]
    max_attempts: NotRequired[int | None]
    stall_seconds: NotRequired[float | None]
    webhook_url: NotRequired[str | None]
    kind: Literal['export']
    spec: ExportSpec


class ExportSpec(TypedDict):
    checkpoint: str | OutputRef


class FileMixSource(TypedDict):
    alias: NotRequired[str | None]
    shape: NotRequired[Literal['auto', 'messages', 'sharegpt', 'alpaca', 'prompt_completion', 'question_answer'] | ColumnMapping | None]
    system_prompt: NotRequired[str | None]
    system_prompt_mode: NotRequired[Literal['add', 'replace'] | None]
    max_examples: NotRequired[int | None]
    weight: NotRequired[float | None]
    type: Literal['artifact']
    artifact_id: str | OutputRef


class FileSource(TypedDict):
    type: Literal['artifact']
    artifact_id: str | OutputRef


class GenerationJobCreate(TypedDict):
    labels: NotRequired[dict[str, str]]
    depends_on: NotRequired[list[str]]
    max_attempts: NotRequired[int | None]
    stall_seconds: NotRequired[float | None]
    webhook_url: NotRequired[str | None]
    kind: Literal['generation']
    spec: GenerationSpec


class GenerationSpec(TypedDict):
    model: NotRequired[str]
    preset: NotRequired[Literal['scaffolding', 'qa'] | None]
    prompt: NotRequired[str | None]
    system: NotRequired[str | None]
    vars: NotRequired[dict[str, Any]]
    topics: NotRequired[list[str] | None]
    per_topic: NotRequired[int]
    source_artifact: NotRequired[str | OutputRef | None]
    count: NotRequired[int | None]
    output: NotRequired[Literal['dialogue', 'completion'] | None]
    temperature: NotRequired[float | None]
    top_p: NotRequired[float | None]
    max_tokens: NotRequired[int | None]
    seed: NotRequired[int]
    concurrency: NotRequired[int]
    requests_per_second: NotRequired[float | None]
    max_cost_usd: NotRequired[float | None]
    max_attempts_per_item: NotRequired[int]
    dedupe: NotRequired[bool]


class HubMixSource(TypedDict):
    alias: NotRequired[str | None]
    shape: NotRequired[Literal['auto', 'messages', 'sharegpt', 'alpaca', 'prompt_completion', 'question_answer'] | ColumnMapping | None]
    system_prompt: NotRequired[str | None]
    system_prompt_mode: NotRequired[Literal['add', 'replace'] | None]
    max_examples: NotRequired[int | None]
    weight: NotRequired[float | None]
    type: Literal['hub']
    name: str
    config: NotRequired[str | None]
    split: NotRequired[str]
    revision: NotRequired[str | None]


class HubSource(TypedDict):
    type: Literal['hub']
    name: str
    config: NotRequired[str | None]
    split: NotRequired[str]
    revision: NotRequired[str | None]


class ItemOut(TypedDict):
    index: int
    status: str
    attempts: int
    output: Any
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    error: Any


class ItemsPage(TypedDict):
    data: list[ItemOut]
    has_more: bool
    next_cursor: int | None


class JobError(TypedDict):
    code: str
    message: str
    user_error: bool
    details: NotRequired[dict[str, Any]]


class JobList(TypedDict):
    data: list[JobRead]
    has_more: bool
    next_cursor: str | None


class JobRead(TypedDict):
    id: str
    kind: str
    status: Literal['pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled']
    spec: dict[str, Any]
    labels: dict[str, str]
    depends_on: list[str]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: JobError | None
    attempt: int
    max_attempts: int
    preemptions: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    cancel_requested_at: str | None
    pipeline_id: NotRequired[str | None]
    pipeline_step: NotRequired[str | None]
    estimate: NotRequired[dict[str, Any] | None]
    webhook_url: NotRequired[str | None]


class JudgeSpec(TypedDict):
    model: str
    rubric: NotRequired[str | None]
    against: NotRequired[Literal['base', 'reference'] | None]
    concurrency: NotRequired[int]


class LocalMixSource(TypedDict):
    alias: NotRequired[str | None]
    shape: NotRequired[Literal['auto', 'messages', 'sharegpt', 'alpaca', 'prompt_completion', 'question_answer'] | ColumnMapping | None]
    system_prompt: NotRequired[str | None]
    system_prompt_mode: NotRequired[Literal['add', 'replace'] | None]
    max_examples: NotRequired[int | None]
    weight: NotRequired[float | None]
    type: Literal['local']
    path: str
    config: NotRequired[str | None]
    split: NotRequired[str]


class LocalSource(TypedDict):
    type: Literal['local']
    path: str
    config: NotRequired[str | None]
    split: NotRequired[str]


class MetricsPage(TypedDict):
    job_id: str
    series: dict[str, list[list[float | None]]]
    has_more: bool
    next_cursor: int | None


OutputRef = TypedDict('OutputRef', {
    '$ref': 'str',
})


class PipelineCreate(TypedDict):
    name: NotRequired[str | None]
    labels: NotRequired[dict[str, str]]
    steps: dict[str, Any]
    webhook_url: NotRequired[str | None]


class PipelineDryRun(TypedDict):
    dry_run: Literal[True]
    steps: dict[str, dict[str, Any]]
    estimate: dict[str, Any]


class PipelineList(TypedDict):
    data: list[PipelineRead]
    has_more: bool
    next_cursor: str | None


class PipelineRead(TypedDict):
    id: str
    name: str | None
    labels: dict[str, str]
    status: Literal['pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled']
    steps: list[PipelineStepRead]
    estimate: dict[str, Any] | None
    webhook_url: str | None
    created_at: str


class PipelineStepRead(TypedDict):
    name: str
    job_id: str
    kind: str
    status: Literal['pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled']
    depends_on: list[str]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: JobError | None


class PreviewOut(TypedDict):
    artifact_id: str
    rows: list[dict[str, Any]]


class Problem(TypedDict):
    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]]


class RenderOut(TypedDict):
    artifact_id: str
    row: int
    num_tokens: int
    trained_tokens: int
    tokens: list[int]
    pieces: list[str]
    weights: list[float]


class SampleOut(TypedDict):
    row: int
    model: str
    messages: list[dict[str, Any]] | None
    reference: str | None
    reply: str | None
    opponent: str | None
    opponent_reply: str | None
    verdict: str | None
    reason: str | None
    mean_loss: float | None
    scored_tokens: int | None


class SamplesPage(TypedDict):
    data: list[SampleOut]
    has_more: bool
    next_cursor: str | None


class TestJobCreate(TypedDict):
    labels: NotRequired[dict[str, str]]
    depends_on: NotRequired[list[str]]
    max_attempts: NotRequired[int | None]
    stall_seconds: NotRequired[float | None]
    webhook_url: NotRequired[str | None]
    kind: Literal['test']
    spec: NotRequired[TestJobSpec]


class TestJobSpec(TypedDict):
    steps: NotRequired[int]
    step_seconds: NotRequired[float]
    fail_with: NotRequired[str | None]


class TrainingJobCreate(TypedDict):
    labels: NotRequired[dict[str, str]]
    depends_on: NotRequired[list[str]]
    max_attempts: NotRequired[int | None]
    stall_seconds: NotRequired[float | None]
    webhook_url: NotRequired[str | None]
    kind: Literal['training']
    spec: TrainingSpec


class TrainingSpec(TypedDict):
    base_model: NotRequired[str]
    train_artifact: str | OutputRef
    validation_artifact: NotRequired[str | OutputRef | None]
    from_checkpoint: NotRequired[str | OutputRef | None]
    rank: NotRequired[int]
    learning_rate: NotRequired[float | None]
    lr_schedule: NotRequired[Literal['constant', 'linear', 'cosine']]
    warmup_steps: NotRequired[int]
    batch_size: NotRequired[int]
    epochs: NotRequired[int | None]
    max_steps: NotRequired[int | None]
    max_length: NotRequired[int]
    train_on: NotRequired[Literal['all_assistant', 'last_assistant']]
    enable_thinking: NotRequired[bool]
    save_every: NotRequired[int]
    eval_every: NotRequired[int]
    sampler_every: NotRequired[int | None]
    auto_eval: NotRequired[bool]
    seed: NotRequired[int]
    export_adapter: NotRequired[bool]
    adam: NotRequired[AdamSpec]


class WebhookDeliveryList(TypedDict):
    data: list[WebhookDeliveryRead]
    has_more: bool
    next_cursor: str | None


class WebhookDeliveryRead(TypedDict):
    id: str
    job_id: str | None
    pipeline_id: str | None
    event_type: str
    status: Literal['pending', 'delivered', 'failed']
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    last_attempt_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None
