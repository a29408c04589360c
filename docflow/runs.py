"""`docflow runs list|show|retry|fetch`: a run's state from its manifest in S3, retrying its
failures, and downloading its results."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO


def _profile(name: str) -> Any:
    from tasks.settings import load_profile

    return load_profile(name)


def _emit(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, default=str) + "\n")


def _any_status(profile: Any, run_key: str) -> Any:
    """A run's status, a sharded run's parent included (None: no such run)."""
    from docflow.sharded import sharded_status
    from tasks.run.results.status import read_status

    return read_status(profile, run_key) or sharded_status(profile, run_key)


def _no_run(run_key: str) -> int:
    sys.stderr.write(f"no run {run_key!r} in this profile's bucket (see `docflow runs list`)\n")
    return 2


def _show_text(status: Any) -> str:
    from docflow.sharded import ShardedStatus, format_shards
    from tasks.run.results.status import format_show

    text = format_show(status)
    return text + format_shards(status) if isinstance(status, ShardedStatus) else text


def list_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`docflow runs list`: a sharded run is one row, its shards indented beneath it."""
    from docflow.sharded import ShardedStatus, group_keys, sharded_status
    from tasks.run.results.status import format_list, read_status, run_keys

    out = out or sys.stdout
    profile = _profile(args.profile)
    plain, parents = group_keys(run_keys(profile))
    found = [s for key in plain if (s := read_status(profile, key)) is not None]
    found += [s for p, ks in parents.items() if (s := sharded_status(profile, p, ks)) is not None]
    found.sort(key=lambda s: s.created_at, reverse=True)
    runs = found[: args.limit]
    if args.json:
        _emit([r.model_dump(mode="json") for r in runs], out)
        return 0
    rows = []
    for run in runs:
        rows.append(run)
        if isinstance(run, ShardedStatus):
            rows += [s.model_copy(update={"run_key": f"  {s.run_key}"}) for s in run.shards]
    out.write(format_list(rows))
    return 0


def show_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`docflow runs show KEY`: a sharded run's totals and its shards."""
    out = out or sys.stdout

    status = _any_status(_profile(args.profile), args.run_key)
    if status is None:
        return _no_run(args.run_key)
    if args.json:
        _emit(status.model_dump(mode="json"), out)
    else:
        out.write(_show_text(status))
    return 0


def retry_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`docflow runs retry KEY [--only-reason TEXT]`: run the failed (and canceled) documents
    again; of a sharded run, those of each shard, and merge the parent's results again."""
    from docflow.sharded import ShardedStatus, remerge

    out = out or sys.stdout
    profile = _profile(args.profile)
    status = _any_status(profile, args.run_key)
    if status is None:
        return _no_run(args.run_key)
    if isinstance(status, ShardedStatus):
        for shard in status.shards:
            if shard.retryable and (code := _retry_one(profile, args, shard.run_key)):
                return code
        remerge(profile, args.run_key)
    elif code := _retry_one(profile, args, args.run_key):
        return code
    status = _any_status(profile, args.run_key)
    if args.json:
        _emit(status.model_dump(mode="json"), out)
    else:
        out.write(_show_text(status))
    return 0


def _retry_one(profile: Any, args: argparse.Namespace, run_key: str) -> int:
    """Retry one run (a shard: its own documents only); non-zero when it cannot be retried."""
    from docflow.sharded import SHARD_KEY
    from flows.process_documents import process_documents
    from tasks.params.flat import grouped
    from tasks.params.groups import RetryOptions
    from tasks.run.plan.manifest import load_manifest
    from tasks.sharding.shards import Shard

    manifest = load_manifest(run_key, profile)
    if manifest is None:
        return _no_run(run_key)
    if not manifest.parameters:
        sys.stderr.write(
            f"run {run_key!r} was started before docflow kept a run's parameters: run "
            f'process-documents with run_key={run_key}, retry={{"retry_failed": true}} and its corpus\n'
        )
        return 2
    params = dict(manifest.parameters)
    if "reduce_of" in params:
        sys.stderr.write(
            f"run {run_key!r} is the reduce step of run {params['reduce_of']!r}: retry that "
            "run (its failed chunks and reduce prompts run again)\n"
        )
        return 2
    if match := SHARD_KEY.match(run_key):
        params["shard"] = Shard(index=int(match["number"]) - 1, count=int(match["count"]))
    process_documents(  # a manifest of an older run holds flat names: grouped the same way
        **grouped(params),
        profile=args.profile,
        endpoint=manifest.endpoint,
        run_key=run_key,
        retry=RetryOptions(retry_failed=True, retry_reason=args.only_reason),
    )
    return 0


RESULT_FILES = ("results.", "failures.parquet", "summary.json")


def fetch_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`docflow runs fetch KEY [--to DIR]`: download a run's results, failures and summary."""
    from pathlib import Path

    out = out or sys.stdout

    from docflow.sharded import shard_keys
    from tasks.aws.clients import aws_client
    from tasks.aws.s3 import split_s3_uri
    from tasks.run.plan.layout import run_uri

    profile = _profile(args.profile)
    bucket, prefix = split_s3_uri(run_uri(profile, args.run_key, ""))
    prefix = prefix.rstrip("/") + "/"
    s3 = aws_client("s3", profile)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
    names = [
        o["Key"][len(prefix) :]
        for o in listed.get("Contents", [])
        if o["Key"][len(prefix) :].startswith(RESULT_FILES)
    ]
    if not names and not listed.get("Contents") and not shard_keys(profile, args.run_key):
        return _no_run(args.run_key)
    if not names:
        sys.stderr.write(
            f"run {args.run_key!r} has no results in s3://{bucket}/{prefix} yet "
            "(see `docflow runs show`)\n"
        )
        return 2
    target = Path(args.to or Path("results") / args.run_key)
    target.mkdir(parents=True, exist_ok=True)
    for name in sorted(names):
        s3.download_file(bucket, prefix + name, str(target / name))
    fetched = {"run_key": args.run_key, "to": str(target), "files": sorted(names)}
    if args.json:
        _emit(fetched, out)
    else:
        out.write(
            f"{len(names)} files of run {args.run_key} in {target}: {', '.join(sorted(names))}\n"
        )
    return 0


def add_parser(sub: Any) -> None:
    """The `runs` sub-command and its `list`, `show` and `retry`."""
    runs = sub.add_parser("runs", help="runs from their manifests in S3: list, show, retry")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--profile", default="local", help="deployment profile name or path")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    listing = runs_sub.add_parser("list", help="recent runs: key, state, counts, endpoint, started")
    common(listing)
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=list_command)

    show = runs_sub.add_parser(
        "show", help="one run: counts, progress, failures by reason, results"
    )
    common(show)
    show.add_argument("run_key")
    show.set_defaults(func=show_command)

    retry = runs_sub.add_parser(
        "retry", help="run a run's failed and canceled documents again under the same run key"
    )
    common(retry)
    retry.add_argument("run_key")
    retry.add_argument(
        "--only-reason", help="retry only failures whose reason contains this text (any case)"
    )
    retry.set_defaults(func=retry_command)

    fetch = runs_sub.add_parser("fetch", help="download a run's results, failures and summary")
    common(fetch)
    fetch.add_argument("run_key")
    fetch.add_argument("--to", help="folder to write to (default: results/<run key>)")
    fetch.set_defaults(func=fetch_command)
