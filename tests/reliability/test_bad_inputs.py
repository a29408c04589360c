"""Bad inputs: each gets a clear error naming the problem and what to do; the rest of the run is unaffected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks.aws.clients import aws_client
from tests.reliability.ledger import ledger_of
from tests.runs import Deployment, EndpointProbe, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

GOOD = 40


def bad_rows_corpus(path: Path) -> tuple[list[str], dict[str, str]]:
    """40 good documents and one row of each bad kind; returns the good ids and each bad row's id or line."""
    ids = write_corpus(path, GOOD)
    with path.open("ab") as fh:
        fh.write(b'{"id": "bad-json", "text": \n')  # line 41
        fh.write(b'{"id": "bad-utf8", "text": "caf\xe9 \xff"}\n')  # line 42
        fh.write(b'{"id": "zero-bytes", "text": ""}\n')  # line 43
        fh.write(json.dumps({"id": "huge", "text": "x" * 6000}).encode() + b"\n")
        fh.write(
            json.dumps({"id": ids[3], "text": "a second document with this id"}).encode() + b"\n"
        )
    return ids, {
        "invalid JSON": "line 41",
        "invalid UTF-8": "line 42",
        "0-byte document": "zero-bytes",
        "over the payload limit": "huge",
        "duplicate id": ids[3],
    }


def test_bad_rows_are_rejected_with_reasons_and_the_rest_completes(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 45 rows: 40 good documents plus invalid JSON, invalid UTF-8, a 0-byte text, a 6 kB document, a duplicate id."""
    dep = deploy_echo(cap=8)
    corpus = tmp_path / "bad.jsonl"
    ids, _ = bad_rows_corpus(corpus)
    out = run_flow(dep, corpus, batch_size=8, max_batch_bytes=4000)
    ledger = ledger_of(
        "bad rows",
        "40 good rows + 5 bad rows, max_batch_bytes 4000",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        input_rows=GOOD + 5,
    )
    assert ledger.balanced, ledger.line()
    assert ledger.completed == GOOD and ledger.rejected == 5 and ledger.failed == 0
    rejected = out.table[out.table["status"] == "rejected"]
    reasons = list(rejected["reason"])
    for row, reason in zip(rejected["row"], reasons, strict=True):
        print(f"[rejected] row {row}: {reason}")
    by_id = dict(zip(rejected["doc_id"].fillna(""), rejected["reason"], strict=True))

    def one(*needles: str) -> str:
        found = [r for r in reasons if all(n in r for n in needles)]
        assert len(found) == 1, (needles, reasons)
        return found[0]

    json_reason = one("line 41", "not valid JSON")
    utf8_reason = one("line 42", "not valid UTF-8")
    assert "empty text" in by_id["zero-bytes"]
    assert "over the payload limit of 4000 bytes" in by_id["huge"]
    assert "raise max_batch_bytes" in by_id["huge"]
    duplicate = one(f"duplicate id {ids[3]!r}")
    assert "ids must be unique" in duplicate
    # Each reason also says what to do about it.
    for reason in (json_reason, utf8_reason, by_id["zero-bytes"]):
        assert any(w in reason for w in ("fix", "remove", "re-save", "fill")), reason
    # The good documents went through untouched: one row each, in 5 batches, nothing re-sent.
    assert probe.accepted == out.result["invocations"] == 5
    assert set(out.table.loc[out.table["status"] == "completed", "doc_id"]) == set(ids)


def _assert_untouched(dep: Deployment, probe: EndpointProbe) -> None:
    """A refused run invoked nothing and left no run folder behind."""
    assert probe.accepted == 0
    listed = aws_client("s3", dep.profile).list_objects_v2(
        Bucket=dep.profile.bucket, Prefix=f"{dep.profile.prefixes.runs}/"
    )
    assert listed.get("KeyCount", 0) == 0, [o["Key"] for o in listed.get("Contents", [])]


def test_empty_file(deploy_echo: Any, probe: EndpointProbe, tmp_path: Path) -> None:
    """Load: one 0-byte .jsonl file."""
    dep = deploy_echo()
    corpus = tmp_path / "empty.jsonl"
    corpus.write_bytes(b"")
    with pytest.raises(Exception, match=r"has no rows; point it at a non-empty") as caught:
        run_flow(dep, corpus)
    assert str(corpus) in str(caught.value)
    _assert_untouched(dep, probe)


def test_missing_corpus_bucket(deploy_echo: Any, probe: EndpointProbe) -> None:
    """Load: a corpus URI in a bucket that does not exist."""
    dep = deploy_echo()
    uri = "s3://docflow-no-such-bucket-h7/corpus.jsonl"
    with pytest.raises(Exception) as caught:
        run_flow(dep, uri)
    message = str(caught.value)
    assert uri in message and "NoSuchBucket" in message, message
    assert "check the bucket" in message or "create it" in message, message
    _assert_untouched(dep, probe)


def test_missing_profile_bucket(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 8 documents; the profile names a bucket that does not exist."""
    from tests.flows.endpoint_helpers import profile_file

    dep = deploy_echo()
    broken = dep.profile.model_copy(update={"bucket": "docflow-no-such-bucket-h8"})
    path = profile_file(broken, tmp_path)
    write_corpus(tmp_path / "c.jsonl", 8)
    with pytest.raises(Exception) as caught:
        run_flow(
            Deployment(broken, path, dep.endpoint, dep.model_data_url, dep.cap),
            tmp_path / "c.jsonl",
        )
    message = str(caught.value)
    assert "bucket 'docflow-no-such-bucket-h8'" in message and "does not exist" in message, message
    assert "create it or set `bucket` in the profile" in message, message
    assert probe.accepted == 0


def test_nonexistent_endpoint(deploy_echo: Any, probe: EndpointProbe, tmp_path: Path) -> None:
    """Load: 8 documents sent to an endpoint that was never deployed."""
    dep = deploy_echo()
    write_corpus(tmp_path / "c.jsonl", 8)
    with pytest.raises(ValueError) as caught:
        run_flow(dep, tmp_path / "c.jsonl", endpoint="docflow-never-deployed")
    message = str(caught.value)
    assert "endpoint 'docflow-never-deployed' not found" in message, message
    assert "deploy it first with the deploy-endpoint flow" in message, message
    _assert_untouched(dep, probe)


def test_template_with_unknown_placeholder(
    deploy_echo: Any, probe: EndpointProbe, tmp_path: Path
) -> None:
    """Load: 8 documents and a custom template using {author}, which no document has."""
    dep = deploy_echo()
    write_corpus(tmp_path / "c.jsonl", 8)
    with pytest.raises(ValueError) as caught:
        run_flow(
            dep,
            tmp_path / "c.jsonl",
            template="custom",
            custom_template="By {author}: {text}",
        )
    message = str(caught.value)
    assert "placeholder {author} is unknown" in message, message
    assert "known placeholders: text, doc_id, fields, labels, n" in message, message
    _assert_untouched(dep, probe)
