"""Start or resume a run: load its manifest, or batch the corpus and save a new one."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.corpus.documents import Corpus
from tasks.run.plan.batching import BatchPayload, make_batches
from tasks.run.plan.manifest import (
    AttemptTime,
    BatchStatus,
    RunManifest,
    load_manifest,
    new_record,
    save_manifest,
)
from tasks.run.plan.retry import reopen_failed
from tasks.run.plan.target import EndpointOutputs
from tasks.run.request.prompts import GenerationParameters, PromptTemplate
from tasks.settings import Profile


class PreparedRun:
    """A run's manifest, whether it was resumed, and the payloads still to be staged in S3.

    The payloads are handed over once (``take_payloads``) so that the stager holds the only
    reference and each payload's bytes are freed as soon as it is written.
    """

    def __init__(self, manifest: RunManifest, resumed: bool, payloads: list[BatchPayload]) -> None:
        self.manifest = manifest
        self.resumed = resumed
        self._payloads = payloads

    def inline_bodies(self) -> dict[str, bytes]:
        """The payloads still held of batches sent inline (no S3 object), by batch id."""
        inline = {b for b, r in self.manifest.batches.items() if r.inline}
        return {p.batch_id: p.body for p in self._payloads if p.batch_id in inline}

    def take_payloads(self) -> list[BatchPayload]:
        """The payloads to stage (empty on a second call)."""
        payloads, self._payloads = self._payloads, []
        return payloads


@task(name="prepare-manifest", cache_policy=NO_CACHE)
def prepare_manifest(
    profile: Profile,
    target: EndpointOutputs,
    run_key: str,
    corpus: Corpus,
    template: PromptTemplate,
    params: GenerationParameters,
    max_docs: int,
    max_bytes: int,
    *,
    parameters: dict[str, Any] | None = None,
    retry_failed: bool = False,
    retry_reason: str | None = None,
) -> PreparedRun:
    """Load the run's manifest to resume it, or batch the corpus and save a new one.

    The payloads are staged by the fan-out (``stage-payloads``) while it invokes the first ones;
    a resumed run whose staging never finished builds them again (the same bytes, the same batch
    ids) and stages the ones never invoked. ``parameters`` (what shapes the results) are kept in
    a new run's manifest; ``retry_failed`` re-opens a resumed run's failed batches (those whose
    reason contains ``retry_reason``) so that they run again.
    """
    existing = load_manifest(run_key, profile)
    if existing is not None:
        check_resumable(existing, corpus, target.endpoint)
        existing.canceled = None  # a cancelled run resumes: its unfinished batches run now
        existing.attempt_log.append(AttemptTime(started_at=datetime.now(UTC)))
        if retry_failed:
            reopened = reopen_failed(existing, retry_reason)
            get_run_logger().info(
                "run %s: %d failed batches (%d documents) re-opened for retry",
                run_key,
                len(reopened),
                sum(len(r.doc_ids) for r in reopened),
            )
            save_manifest(existing, profile)
        # Payloads sent inline are in no S3 object: rebuild those of unfinished batches.
        inline = {r.batch_id for r in existing.batches.values() if r.inline and not r.terminal}
        if existing.staged and not inline:
            return PreparedRun(existing, True, [])
        payloads, _ = make_batches(
            corpus.documents, template, params, max_docs=max_docs, max_bytes=max_bytes
        )
        missing = [
            p
            for p in payloads
            if p.batch_id in inline or (not existing.staged and never_invoked(existing, p))
        ]
        # Every batch left to stage was invoked once, so it is in S3 (inline ones never are).
        existing.staged = all(p.batch_id in inline for p in missing)
        return PreparedRun(existing, True, missing)
    payloads, rejected = make_batches(
        corpus.documents, template, params, max_docs=max_docs, max_bytes=max_bytes
    )
    manifest = RunManifest(
        run_key=run_key,
        endpoint=target.endpoint,
        model_artifact=target.model_artifact,
        rejected=[*corpus.rejected, *rejected],
        staged=not payloads,
        corpus=(parameters or {}).get("corpus"),
        attempt_log=[AttemptTime(started_at=datetime.now(UTC))],
        parameters=parameters or {},
    )
    for payload in payloads:
        manifest.add(new_record(profile, target, run_key, payload))
    save_manifest(manifest, profile)
    return PreparedRun(manifest, False, payloads)


def never_invoked(manifest: RunManifest, payload: BatchPayload) -> bool:
    """A payload whose batch is pending and was never submitted (so it may not be in S3 yet)."""
    record = manifest.batches.get(payload.batch_id)
    return record is not None and record.status is BatchStatus.PENDING and record.attempts == 0


def check_resumable(manifest: RunManifest, corpus: Corpus, endpoint: str) -> None:
    """A run key names one corpus on one endpoint: refuse to resume it with different inputs."""
    batched = {d for r in manifest.batches.values() if r.parent is None for d in r.doc_ids}
    accepted = {d.doc_id for d in corpus.documents}
    inputs = len(batched) + len(manifest.rejected)
    if manifest.endpoint != endpoint or not batched <= accepted or inputs != corpus.size:
        raise ValueError(
            f"run key {manifest.run_key!r} belongs to another run ({inputs} input rows on endpoint "
            f"{manifest.endpoint!r}; this corpus has {corpus.size} rows for {endpoint!r}): pass a "
            "new run_key, or leave it out to derive one from the inputs"
        )


def run_parameters(corpus: str, groups: Mapping[str, BaseModel]) -> dict[str, Any]:
    """What a run's manifest keeps of its parameters: the corpus (a local path made absolute) and
    the groups that shape its results, so that ``docflow runs retry`` runs it the same way."""
    local = Path(corpus)
    where = str(local.resolve()) if "://" not in corpus and local.exists() else corpus
    return {
        "corpus": where,
        **{name: group.model_dump(mode="json") for name, group in groups.items()},
    }
