"""Package the model, deploy the async endpoint, process a corpus: the whole path in one flow."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.deploy_endpoint import deploy_endpoint
from flows.package_model import package_model
from flows.process_documents import process_documents
from tasks.params.groups import (
    BatchingOptions,
    ColumnOptions,
    GenerationOptions,
    LongDocumentOptions,
    OutputOptions,
    PromptOptions,
    ReadOptions,
)
from tasks.run.request.messages import end_to_end_run_name


@flow(name="end-to-end", flow_run_name=end_to_end_run_name)
def end_to_end(
    corpus: str = "datasets/sample",
    profile: str = "local",
    model_source: str = "smollm2",
    endpoint: str | None = None,
    environment: dict[str, str] | None = None,
    wait_delay_s: int = 2,
    wait_max_attempts: int = 300,
    prompt: PromptOptions = PromptOptions(),
    generation: GenerationOptions = GenerationOptions(),
    columns: ColumnOptions = ColumnOptions(),
    reading: ReadOptions = ReadOptions(),
    long_documents: LongDocumentOptions = LongDocumentOptions(),
    batching: BatchingOptions = BatchingOptions(),
    output: OutputOptions = OutputOptions(),
) -> dict[str, Any]:
    """Package → deploy → process: the whole path from a model and a corpus to a results table.

    Args:
        corpus: Local path or s3:// URI of the corpus (see process-documents).
        profile: Deployment profile name or path.
        model_source: What package-model packages: "smollm2" (local default), a folder, a .gguf, a hub id.
        endpoint: Endpoint name; default: the profile's.
        environment: Extra environment variables for the model container.
        wait_delay_s: Seconds between endpoint status polls while deploying.
        wait_max_attempts: Polls before deployment gives up.
        prompt: process-documents' prompt group.
        generation: process-documents' generation group.
        columns: process-documents' column group.
        reading: process-documents' reading group (folders: patterns, OCR, archive limits).
        long_documents: process-documents' long-document group.
        batching: process-documents' batching group.
        output: process-documents' output group.
    """
    artifact = package_model(source=model_source, profile=profile)
    deployed = deploy_endpoint(
        profile=profile,
        model_artifact=artifact,
        endpoint_name=endpoint,
        environment=environment,
        wait_delay_s=wait_delay_s,
        wait_max_attempts=wait_max_attempts,
    )
    return process_documents(  # type: ignore[return-value]
        corpus=corpus,
        profile=profile,
        endpoint=deployed["endpoint_name"],
        prompt=prompt,
        generation=generation,
        columns=columns,
        reading=reading,
        long_documents=long_documents,
        batching=batching,
        output=output,
    )
