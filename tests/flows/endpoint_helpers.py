"""Helpers for the deploy/teardown flow tests: profile files, call counting, one async invocation."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

import yaml

from tasks.aws.clients import aws_client
from tasks.settings import Profile


class Wait(TypedDict):
    """The deploy and teardown flows' polling parameters (typed, so ``**FAST_WAIT`` checks)."""

    wait_delay_s: int
    wait_max_attempts: int


# Fast polling for localcloud; the flows' defaults (30 s x 120) are AWS's.
FAST_WAIT: Wait = {"wait_delay_s": 1, "wait_max_attempts": 120}
WATCHED = ("sagemaker", "sns", "iam", "application-autoscaling", "cloudwatch")
MUTATING = ("Create", "Update", "Put", "Register", "Delete", "Deregister")


def profile_file(profile: Profile, directory: Path) -> str:
    """Write the test's profile as YAML, so flows get it by path like any user profile."""
    path = directory / f"profile-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
    return str(path)


@contextmanager
def count_calls(profile: Profile) -> Iterator[Counter[str]]:
    """Count every API call the flows make through the profile's clients (botocore event hooks)."""
    calls: Counter[str] = Counter()

    def record(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    clients = [aws_client(service, profile) for service in WATCHED]
    for client in clients:
        client.meta.events.register("before-call", record)
    try:
        yield calls
    finally:
        for client in clients:
            client.meta.events.unregister("before-call", record)


def mutations(calls: Counter[str]) -> dict[str, int]:
    """Only the calls that change something."""
    return {name: n for name, n in calls.items() if name.startswith(MUTATING)}


def invoke_once(profile: Profile, endpoint_name: str, prompt: str) -> dict[str, Any]:
    """Stage a one-document JSON Lines payload, InvokeEndpointAsync, wait for the output object."""
    s3 = aws_client("s3", profile)
    key = f"{profile.prefixes.runs}/test/{uuid.uuid4().hex}.jsonl"
    body = json.dumps({"id": "doc-1", "prompt": prompt}) + "\n"
    s3.put_object(Bucket=profile.bucket, Key=key, Body=body.encode())
    answer = aws_client("sagemaker-runtime", profile).invoke_endpoint_async(
        EndpointName=endpoint_name,
        InputLocation=f"s3://{profile.bucket}/{key}",
        ContentType="application/jsonlines",
        Accept="application/jsonlines",
    )
    bucket, _, out_key = answer["OutputLocation"].removeprefix("s3://").partition("/")
    s3.get_waiter("object_exists").wait(
        Bucket=bucket, Key=out_key, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    text = s3.get_object(Bucket=bucket, Key=out_key)["Body"].read().decode()
    return dict(json.loads(text.splitlines()[0]))
