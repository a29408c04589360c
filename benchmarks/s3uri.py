"""Split and join s3:// URIs."""

from __future__ import annotations

from urllib.parse import urlparse


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def count_results(body: bytes) -> tuple[int, int, int]:
    """(completed, failed, completion tokens) over the result lines of one output object."""
    import json

    done = failed = tokens = 0
    for line in body.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "error" in row:
            failed += 1
        else:
            done += 1
            tokens += int(row.get("completion_tokens", 0))
    return done, failed, tokens
