"""Package the model, deploy the async endpoint, process a corpus: the whole path in one flow."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows.deploy_endpoint import deploy_endpoint
from flows.package_model import package_model
from flows.process_documents import DEFAULT_MAX_NEW_TOKENS, process_documents
from tasks.run.messages import end_to_end_run_name


@flow(name="end-to-end", flow_run_name=end_to_end_run_name)
def end_to_end(
    corpus: str = "datasets/sample",
    profile: str = "local",
    model_source: str = "smollm2",
    endpoint: str | None = None,
    template: Literal["summarize", "extract", "classify", "custom"] = "summarize",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    output_dir: str | None = None,
    output_format: Literal["parquet", "csv", "jsonl"] = "parquet",
    environment: dict[str, str] | None = None,
    wait_delay_s: int = 2,
    wait_max_attempts: int = 300,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Package → deploy → process: the whole path from a model and a corpus to a results table.

    Args:
        corpus: Local path or s3:// URI of the corpus (see process-documents).
        profile: Deployment profile name or path.
        model_source: What package-model packages: "smollm2" (local default), a folder, a .gguf, a hub id.
        endpoint: Endpoint name; default: the profile's.
        template: Prompt kind for process-documents.
        max_new_tokens: Generation budget per document (process-documents' default).
        batch_size: Documents per invocation payload.
        output_dir: Also write the results table to this local folder.
        output_format: Results table format.
        environment: Extra environment variables for the model container.
        wait_delay_s: Seconds between endpoint status polls while deploying.
        wait_max_attempts: Polls before deployment gives up.
        options: More process-documents parameters, e.g. {"fields": {"amount": "number"},
            "temperature": 0.7, "system_prompt": "..."}.
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
    return process_documents(
        corpus=corpus,
        profile=profile,
        endpoint=deployed["endpoint_name"],
        template=template,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        output_dir=output_dir,
        output_format=output_format,
        **(options or {}),
    )
