"""`docflow estimate CORPUS`: what a run of the corpus would send and cost, invoking nothing.

The same steps as ``process_documents(dry_run=True)`` without a Prefect flow run: load and
validate the corpus, fetch the model's tokenizer from its artifact (the endpoint's, or
``--model``), count and plan the prompts, batch them and price the generation budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tasks.corpus.read import ReadOptions
    from tasks.run.estimate import Estimate


def estimate_corpus(
    corpus: str,
    *,
    profile: str = "local",
    endpoint: str | None = None,
    model: str | None = None,
    template: str = "summarize",
    fields: list[str] | None = None,
    labels: list[str] | None = None,
    custom_template: str | None = None,
    id_column: str = "id",
    text_column: str = "text",
    max_new_tokens: int | None = None,
    max_doc_bytes: int = 100_000,
    long_documents: str = "reject",
    chunk_overlap_tokens: int = 64,
    batch_size: int = 16,
    max_batch_bytes: int = 1_000_000,
    options: ReadOptions | None = None,
) -> Estimate:
    """The estimate; ``model`` (an artifact's s3://…/model.tar.gz) instead of an endpoint's model.

    Defaults are process_documents' own, so the estimate is of the run those parameters make.
    """
    from flows.process_documents import DEFAULT_MAX_NEW_TOKENS, build_template
    from tasks.run.corpus import ColumnMapping, load_corpus
    from tasks.run.estimate import estimate_run
    from tasks.run.long_documents import (
        LongDocuments,
        check_long_documents,
        plan_long_documents,
    )
    from tasks.run.notifications import endpoint_outputs
    from tasks.run.prompts import GenerationParameters
    from tasks.run.tokens import token_counter
    from tasks.settings import load_profile

    prof = load_profile(profile)
    tmpl = build_template(template, fields, labels, custom_template)
    params = GenerationParameters(max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
    loaded = load_corpus(
        corpus,
        ColumnMapping(id=id_column, text=text_column),
        profile=prof,
        max_doc_bytes=max_doc_bytes,
        options=options,
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
    check_long_documents(long_documents, tmpl, chunk_overlap_tokens, counter)
    if counter is None:
        planned, plan = loaded, LongDocuments(mode=long_documents)  # type: ignore[arg-type]
    else:
        planned, plan = plan_long_documents(
            loaded,
            counter,
            tmpl,
            params.max_new_tokens,
            long_documents,  # type: ignore[arg-type]
            chunk_overlap_tokens,
        )
    return estimate_run(
        loaded=loaded,
        planned=planned,
        plan=plan,
        template=tmpl,
        params=params,
        batch_size=batch_size,
        max_batch_bytes=max_batch_bytes,
        profile=prof,
        endpoint=name,
        model_artifact=artifact,
    )


def _run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from tasks.corpus.read import ReadOptions
    from tasks.run.estimate import estimate_text

    out = out or sys.stdout
    if not args.endpoint and not args.model and not _profile_endpoint_exists(args.profile):
        return _survey(args, out)
    estimate = estimate_corpus(
        args.corpus,
        profile=args.profile,
        endpoint=args.endpoint,
        model=args.model,
        template=args.template,
        fields=args.fields,
        labels=args.labels,
        custom_template=args.custom_template,
        max_new_tokens=args.max_new_tokens,
        max_doc_bytes=args.max_doc_bytes,
        long_documents=args.long_documents,
        chunk_overlap_tokens=args.chunk_overlap_tokens,
        batch_size=args.batch_size,
        options=ReadOptions(ocr=args.ocr, include=args.include, exclude=args.exclude),
    )
    if args.json:
        out.write(json.dumps(estimate.model_dump(mode="json"), indent=2) + "\n")
    else:
        out.write(estimate_text(estimate))
    return 0


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
    from tasks.corpus.read import ReadOptions
    from tasks.corpus.survey import survey_corpus, survey_text
    from tasks.run.corpus import ColumnMapping
    from tasks.settings import load_profile

    survey = survey_corpus(
        args.corpus,
        load_profile(args.profile),
        ColumnMapping(),
        max_doc_bytes=args.max_doc_bytes,
        options=ReadOptions(ocr=args.ocr, include=args.include, exclude=args.exclude),
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
    p.add_argument("--max-doc-bytes", type=int, default=100_000)
    p.add_argument(
        "--long-documents", default="reject", choices=["reject", "truncate", "map_reduce"]
    )
    p.add_argument("--chunk-overlap-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true", help="the estimate as JSON")
    p.add_argument(
        "--ocr", default="auto", choices=["auto", "off", "force"], help="folders: OCR of scans"
    )
    p.add_argument("--include", nargs="+", help="folders: glob patterns of files to read")
    p.add_argument("--exclude", nargs="+", help="folders: glob patterns of files to leave out")
    p.set_defaults(func=_run)
