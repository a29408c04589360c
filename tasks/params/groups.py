"""The parameter groups of process_documents, ask_documents and end_to_end.

Prefect renders a pydantic parameter as a nested section of the run form and validates it; the
flows, ``end_to_end``, the CLI, ``prefect.yaml`` and the run manifests all use these models, so
each default is written once, here. A field keeps the name its flat parameter had (the CLI's
flags and the manifests of older runs use those names; see ``tasks.params.flat``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.corpus.limits import ArchiveLimits

# SmolLM2 on the 50 sample documents (summarize): 46 answers end by themselves within 256 tokens
# (median 76, longest 216); the other 4 repeat a phrase until any budget ends (README, defaults).
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_MAX_DOC_BYTES = 100_000
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_BATCH_BYTES = 1_000_000

TemplateKind = Literal["summarize", "extract", "classify", "custom"]
LongMode = Literal["reject", "truncate", "map_reduce"]
OutputFormat = Literal["parquet", "csv", "jsonl"]
OcrMode = Literal["auto", "off", "force"]
Fields = list[str] | dict[str, Any] | str


class Group(BaseModel):
    """A parameter group: unknown keys are an error that names them; frozen, so safe as a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptOptions(Group):
    """What each document is asked."""

    template: TemplateKind = Field(
        "summarize",
        description="Prompt kind: summarize, extract (fields), classify (labels), custom.",
    )
    fields: Fields | None = Field(
        None,
        description='template=extract: the fields with types, e.g. {"amount": "number", "kind": '
        '["sale", "lease"]}; a list of names (strings); or a JSON Schema file. Each becomes a '
        "typed column.",
    )
    labels: list[str] | None = Field(
        None, description="template=classify: the labels; the answer is always one of them."
    )
    custom_template: str | None = Field(
        None, description="template=custom: a template with {text} and {metadata} placeholders."
    )
    multi_label: bool = Field(
        False, description="template=classify: the answer is a list of labels (column labels)."
    )
    system_prompt: str | None = Field(None, description="A system message before every prompt.")
    messages_column: str | None = Field(
        None,
        description="Input column of each document's own chat messages, sent instead of a "
        "template's prompt.",
    )


class AnswerOptions(Group):
    """How ask_documents' answers are shaped (as process_documents' extract and classify)."""

    fields: Fields | None = Field(
        None, description="Every answer is a JSON object of these fields, typed into the row."
    )
    labels: list[str] | None = Field(
        None, description="Every answer is exactly one of these labels (column label)."
    )
    multi_label: bool = Field(False, description="With labels: a list of labels (column labels).")
    system_prompt: str | None = Field(None, description="A system message for every session.")


class GenerationOptions(Group):
    """How the model generates each answer (greedy unless a sampling knob is set)."""

    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, description="Tokens per answer.")
    temperature: float | None = Field(None, description="Sampling temperature; 0 or unset: greedy.")
    top_p: float | None = Field(None, description="Nucleus sampling; turns sampling on.")
    top_k: int | None = Field(None, description="Sample among the k likeliest tokens.")
    repetition_penalty: float | None = Field(
        None, description="Penalty on repeated tokens: values above 1 discourage repeats."
    )
    stop: list[str] | str | None = Field(
        None, description="Strings that end an answer (not with extract or classify)."
    )
    seed: int | None = Field(None, description="Seed of each answer's sampling (needs sampling).")


class ColumnOptions(Group):
    """Which input columns hold what, and the longest document accepted."""

    id_column: str = Field("id", description="Input column of the document id.")
    text_column: str = Field("text", description="Input column of the document text.")
    metadata_columns: list[str] | None = Field(
        None, description="Columns kept as metadata; default: all other columns."
    )
    max_doc_bytes: int = Field(
        DEFAULT_MAX_DOC_BYTES, description="Longest document text in UTF-8 bytes; longer: rejected."
    )


class ReadOptions(Group):
    """How a folder's files are chosen and read: include/exclude patterns, OCR, archive limits."""

    ocr: OcrMode = Field(
        "auto",
        description="Pages without a text layer (scans) and images: auto (OCR only those), off, "
        "or force (every page).",
    )
    archive_limits: ArchiveLimits = Field(
        default_factory=ArchiveLimits,
        description="What one file may expand to through archives and compression (member and "
        "total bytes, members, nesting depth, compression ratio); a rejection names the limit.",
    )
    include: list[str] | None = Field(
        None, description="Glob patterns of the files to read (``docs/**``); default: all."
    )
    exclude: list[str] | None = Field(
        None,
        description="Glob patterns of files to leave out (``*.png``, ``build/**``), each counted "
        "in the summary's excluded.",
    )


class LongDocumentOptions(Group):
    """What happens to a prompt over the model's context (counted with its tokenizer)."""

    mode: LongMode = Field(
        "reject",
        description="reject it, truncate it (tokens_cut column), or map_reduce it (chunks, "
        "then one combined answer; summarize and extract).",
    )
    chunk_overlap_tokens: int = Field(
        64, description="map_reduce: tokens a chunk repeats from the one before."
    )


class BatchingOptions(Group):
    """How documents become invocations, and how long and often they are tried."""

    batch_size: int = Field(DEFAULT_BATCH_SIZE, description="Documents per invocation payload.")
    max_batch_bytes: int = Field(
        DEFAULT_MAX_BATCH_BYTES, description="Bytes per invocation payload."
    )
    max_attempts: int = Field(3, description="Invocations per batch before it fails.")
    deadline_s: float | None = Field(
        None, description="Give up on outstanding batches after this long."
    )
    request_ttl_s: int | None = Field(None, description="RequestTTLSeconds of each invocation.")
    invocation_timeout_s: int | None = Field(
        None, description="InvocationTimeoutSeconds, doubled on each re-invoke."
    )
    reconcile_every_s: float = Field(
        10.0, description="How often outstanding batches are looked up in S3."
    )


class OutputOptions(Group):
    """Where the results table goes besides S3."""

    output_dir: str | None = Field(
        None,
        description="Also write the results here; default: the profile's local_results_dir/<run "
        "key> (local profile: results/<run key>).",
    )
    output_format: OutputFormat = Field("parquet", description="Format of the results table.")


class ShardingOptions(Group):
    """Splitting a corpus into child flow runs spread over the work pool's workers."""

    shards: int = Field(1, description="Shards, by a stable hash of the document id.")
    shard_size: int | None = Field(
        None, description="Documents per shard: enough shards for this many each."
    )
    shard_deployment: str | None = Field(
        None, description="The deployment the shards run on; default: this run's."
    )
    max_shard_attempts: int = Field(3, description="Flow runs per shard before failing.")

    @property
    def wanted(self) -> bool:
        """Whether the parameters ask for more than one shard."""
        return self.shards > 1 or self.shard_size is not None


class RetryOptions(Group):
    """Running the failed documents of an existing run (its run_key) again."""

    retry_failed: bool = Field(False, description="Run the failed documents of run_key again.")
    retry_reason: str | None = Field(
        None, description="Only the failures whose reason contains this text."
    )
