"""Answered pairs of an ask run, one S3 object each: what makes a run resumable.

A pair is written as soon as its answer arrives (``<runs>/<run_key>/answers/<doc hash>/q<n>.json``,
keys from ``tasks.run.plan.layout``); a resumed run lists them and asks only the rest. Failed pairs
are not kept: a resumed run asks them again.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.aws.clients import aws_client
from tasks.run.plan.layout import answer_key, answers_prefix
from tasks.settings import Profile


def save_answer(profile: Profile, run_key: str, row: dict[str, Any]) -> None:
    """Keep one completed row (its document id and question index name the object)."""
    key = answer_key(profile, run_key, row["document_id"], int(row["question_index"]))
    aws_client("s3", profile).put_object(
        Bucket=profile.bucket,
        Key=key,
        Body=json.dumps(row, ensure_ascii=False).encode("utf-8"),
        ContentType="application/json",
    )


def load_answers(profile: Profile, run_key: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Every answered pair of the run: (document id, question index) -> its row."""
    s3 = aws_client("s3", profile)
    found: dict[tuple[str, int], dict[str, Any]] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=profile.bucket, Prefix=answers_prefix(profile, run_key)
    )
    for page in pages:
        for item in page.get("Contents", []):
            row = json.loads(s3.get_object(Bucket=profile.bucket, Key=item["Key"])["Body"].read())
            found[(row["document_id"], int(row["question_index"]))] = row
    return found
