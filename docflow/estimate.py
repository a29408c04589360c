"""`docflow estimate CORPUS`: what a run of the corpus would send and cost, invoking nothing.

The same steps as ``process_documents(dry_run=True)`` without a Prefect flow run: load and
validate the corpus, fetch the model's tokenizer from its artifact (the endpoint's, or
``--model``), count and plan the prompts, batch them and price the generation budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tasks.run.plan.estimate import Estimate


def estimate_corpus(corpus: str, *, profile: str = "local", **flat: Any) -> Estimate:
    """The estimate of ``process_documents(corpus, dry_run=True, ...)`` with flat parameter names
    (``template``, ``batch_size``, ...; ``endpoint``, or ``model``: an artifact's
    s3://…/model.tar.gz instead of an endpoint's model). Defaults are the flow's own groups."""
    from tasks.corpus.documents import ColumnMapping, load_corpus
    from tasks.params.flat import grouped
    from tasks.params.groups import (
        BatchingOptions,
        ColumnOptions,
        GenerationOptions,
        LongDocumentOptions,
        PromptOptions,
        ReadOptions,
    )
    from tasks.run.plan.estimate import estimate_run
    from tasks.run.plan.planning import plan_prompts
    from tasks.run.plan.target import endpoint_outputs
    from tasks.run.request.controls import controls_of
    from tasks.run.request.tokens import token_counter
    from tasks.settings import load_profile

    given = grouped({k: v for k, v in flat.items() if v is not None})
    endpoint, model = given.pop("endpoint", None), given.pop("model", None)
    prompt = PromptOptions(**given.get("prompt", {}))
    generation = GenerationOptions(**given.get("generation", {}))
    columns = ColumnOptions(**given.get("columns", {}))
    long = LongDocumentOptions(**given.get("long_documents", {}))
    batching = BatchingOptions(**given.get("batching", {}))
    reading = ReadOptions(**given.get("reading", {}))
    prof = load_profile(profile)
    tmpl, params, _ = controls_of(prompt, generation)
    loaded = load_corpus(
        corpus,
        ColumnMapping.of(columns),
        profile=prof,
        max_doc_bytes=columns.max_doc_bytes,
        options=reading,
    )
    name = None
    environment: dict[str, str] = {}
    if model:
        artifact = model
    else:
        name = endpoint or prof.endpoint_name
        target = endpoint_outputs(prof, name)
        artifact, environment = target.model_artifact, target.model_environment
    counter = token_counter(prof, artifact, environment)
    planned, plan = plan_prompts(loaded, counter, tmpl, params.max_new_tokens, long)
    return estimate_run(
        loaded=loaded,
        planned=planned,
        plan=plan,
        template=tmpl,
        params=params,
        batch_size=batching.batch_size,
        max_batch_bytes=batching.max_batch_bytes,
        profile=prof,
        endpoint=name,
        model_artifact=artifact,
    )


def _run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from tasks.run.plan.estimate import estimate_text

    out = out or sys.stdout
    if not args.endpoint and not args.model and not _profile_endpoint_exists(args.profile):
        return _survey(args, out)
    estimate = estimate_corpus(args.corpus, **_flags(args))
    if args.json:
        out.write(json.dumps(estimate.model_dump(mode="json"), indent=2) + "\n")
    else:
        out.write(estimate_text(estimate))
    return 0


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, by their flat parameter names (what was left out: the flow's default)."""
    skip = ("func", "corpus", "json", "command")
    return {k: v for k, v in vars(args).items() if k not in skip and v is not None}


def _profile_endpoint_exists(profile: str) -> bool:
    """Whether the profile's own endpoint is deployed (else the estimate is of the corpus only)."""
    from tasks.aws.clients import aws_client
    from tasks.settings import load_profile

    prof = load_profile(profile)
    try:
        aws_client("sagemaker", prof).describe_endpoint(EndpointName=prof.endpoint_name)
    except Exception as exc:  # botocore ClientError: ValidationException "Could not find ..."
        if "Could not find" in str(exc) or "ValidationException" in str(exc):
            return False
        raise
    return True


def _survey(args: argparse.Namespace, out: TextIO) -> int:
    """No endpoint and no model: what docflow makes of the corpus, and what tokens need."""
    from tasks.corpus.documents import ColumnMapping
    from tasks.corpus.survey import survey_corpus, survey_text
    from tasks.params.flat import grouped
    from tasks.params.groups import ColumnOptions, ReadOptions
    from tasks.settings import load_profile

    given = grouped(_flags(args))
    columns = ColumnOptions(**given.get("columns", {}))
    survey = survey_corpus(
        args.corpus,
        load_profile(args.profile),
        ColumnMapping.of(columns),
        max_doc_bytes=columns.max_doc_bytes,
        options=ReadOptions(**given.get("reading", {})),
    )
    if args.json:
        out.write(json.dumps(survey.model_dump(mode="json"), indent=2) + "\n")
    else:
        out.write(survey_text(survey))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`docflow estimate`."""
    p = sub.add_parser(
        "estimate",
        help="documents, batches, tokens, instance-hours and dollars of a run; invokes nothing",
    )
    p.add_argument("corpus", help="the corpus, as process_documents takes it")
    p.add_argument("--profile", default="local")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--endpoint", help="the endpoint whose model runs it (default: the profile's)"
    )
    where.add_argument(
        "--model", help="a packaged model's s3://…/model.tar.gz instead of an endpoint"
    )
    p.add_argument(
        "--template", default="summarize", choices=["summarize", "extract", "classify", "custom"]
    )
    p.add_argument("--fields", nargs="+")
    p.add_argument("--labels", nargs="+")
    p.add_argument("--custom-template")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--max-doc-bytes", type=int)
    p.add_argument("--long-documents", choices=["reject", "truncate", "map_reduce"])
    p.add_argument("--chunk-overlap-tokens", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--json", action="store_true", help="the estimate as JSON")
    p.add_argument(
        "--ocr", choices=["auto", "off", "force"], help="folders: OCR of scans (default auto)"
    )
    p.add_argument("--include", nargs="+", help="folders: glob patterns of files to read")
    p.add_argument("--exclude", nargs="+", help="folders: glob patterns of files to leave out")
    p.set_defaults(func=_run)
