"""Bad inputs: each gets a clear error naming the problem and what to do; the rest of the run is unaffected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
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


def test_a_folder_of_mixed_files_accounts_for_every_file(
    deploy_echo: Any, probe: EndpointProbe, tmp_path: Path
) -> None:
    """Load: a folder of 9 documents (PDF, a scanned PDF read by OCR, DOCX, HTML, .eml, Markdown, text in UTF-8/Latin-1/UTF-16) and 5 files that yield none."""
    from tests.tasks.corpus.mixed import KNOWN, REJECTED, mixed_folder

    dep = deploy_echo()
    out = run_flow(dep, mixed_folder(tmp_path / "mixed"), batch_size=4)
    table = out.table
    for row, doc_id, status, reason in table[["row", "doc_id", "status", "reason"]].itertuples(
        index=False
    ):
        print(f"[{status}] row {row} {doc_id}: {'' if pd.isna(reason) else reason}")
    assert sorted(table["doc_id"]) == sorted([*KNOWN, *REJECTED])  # every file exactly once
    assert table["row"].tolist() == list(range(1, len(KNOWN) + len(REJECTED) + 1))
    assert set(table.loc[table["status"] == "completed", "doc_id"]) == set(KNOWN)
    reasons = dict(zip(table["doc_id"], table["reason"], strict=True))
    for name, needles in REJECTED.items():
        assert all(n in reasons[name] for n in needles), (name, reasons[name])
    pdf = table.set_index("doc_id").loc["reports/annual.pdf"]
    assert (pdf["format"], pdf["title"], pdf["pages"]) == ("pdf", "Annual report", 3)
    assert len(pdf["sha256"]) == 64 and pdf["bytes"] > 0
    assert probe.accepted == out.result["invocations"] == 3  # 9 documents in batches of 4
    scan = table.set_index("doc_id").loc["scans/scan.pdf"]
    assert (scan["status"], scan["ocr_pages"]) == ("completed", "1")


def _jsonl(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD_LINE = b'{"id": "good", "text": "A readable document."}'

# Bad input -> (corpus maker, flow parameters, words of the rejection reason). Each reason names
# the flow parameter (or the `corpus` folder) a user changes to fix it.
REJECTED_ROWS: dict[str, tuple[Any, dict[str, Any], tuple[str, ...]]] = {
    "document over max_doc_bytes": (
        lambda p: _jsonl(
            p / "c.jsonl", GOOD_LINE, json.dumps({"id": "big", "text": "x" * 600}).encode()
        ),
        {"max_doc_bytes": 500},
        ("600 bytes, over max_doc_bytes=500", "raise the flow parameter max_doc_bytes"),
    ),
    "row without an id": (
        lambda p: _jsonl(p / "c.jsonl", GOOD_LINE, b'{"text": "no id"}'),
        {},
        ("missing id", "id_column"),
    ),
    "text that is not a string": (
        lambda p: _jsonl(p / "c.jsonl", GOOD_LINE, b'{"id": "n", "text": 42}'),
        {},
        ("not a string", "text_column"),
    ),
    "duplicate id": (
        lambda p: _jsonl(p / "c.jsonl", GOOD_LINE, b'{"id": "good", "text": "again"}'),
        {},
        ("duplicate id 'good': row 1 already has it", "id_column"),
    ),
    "unsupported file in a folder": (
        lambda p: _folder(p, {"a.txt": b"A readable document.", "b.bin": b"\x00\x01"}),
        {},
        ("binary data (it holds NUL bytes", "`corpus`"),
    ),
    "scanned PDF in a folder, OCR off": (
        lambda p: _folder(p, {"a.txt": b"A readable document.", "scan.pdf": _scan()}),
        {"ocr": "off"},
        ("no text layer and ocr='off'", "set the flow parameter ocr"),
    ),
    "zip bomb in a folder": (
        lambda p: _folder(p, {"a.txt": b"A readable document.", "bomb.zip": _bomb()}),
        {},
        ("over archive_limits.max_ratio=100", "raise the flow parameter archive_limits.max_ratio"),
    ),
}


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / "docs"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _bomb() -> bytes:
    """A zip whose one member is 20 MB of zeros in ~20 KB."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.txt", bytes(20_000_000))
    return out.getvalue()


def _scan() -> bytes:
    from benchmarks.documents import scanned_pdf_bytes

    return scanned_pdf_bytes()


@pytest.mark.parametrize("case", sorted(REJECTED_ROWS))
def test_rejection_reasons_name_the_parameter_to_change(
    case: str, deploy_echo: Any, probe: EndpointProbe, tmp_path: Path
) -> None:
    """Load: one good document and one bad one; the bad one's reason names what to change."""
    make, params, words = REJECTED_ROWS[case]
    dep = deploy_echo()
    out = run_flow(dep, make(tmp_path), **params)
    table = out.table
    assert table["row"].tolist() == [1, 2] and list(table["status"]) == ["completed", "rejected"]
    reason = table["reason"].iloc[1]
    print(f"[{case}] {reason}")
    assert all(w in reason for w in words), reason


def test_a_broken_json_line_keeps_its_readable_id(
    deploy_echo: Any, probe: EndpointProbe, tmp_path: Path
) -> None:
    """Load: a good line and a line cut short after its id."""
    dep = deploy_echo()
    out = run_flow(
        dep, _jsonl(tmp_path / "c.jsonl", GOOD_LINE, b'{"id": "cut-short", "text": "abc')
    )
    rejected = out.table[out.table["status"] == "rejected"]
    assert rejected["doc_id"].tolist() == ["cut-short"] and rejected["row"].tolist() == [2]
    reason = rejected["reason"].iloc[0]
    assert reason.startswith("line 2 is not valid JSON (Unterminated string starting at column 29)")
    assert "at at" not in reason


# Bad parameter -> (flow parameters, words of the error). The run is refused before it starts.
REFUSED: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "CSV without the id and text columns": ({}, ("id_column", "text_column", "['body', 'name']")),
    "classify without labels": ({"template": "classify"}, ("labels",)),
    "extract without fields": ({"template": "extract"}, ("fields",)),
    "custom without a template": ({"template": "custom"}, ("custom_template",)),
    "max_doc_bytes below 1": ({"max_doc_bytes": 0}, ("max_doc_bytes",)),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_runs_name_the_parameter_to_change(
    case: str, deploy_echo: Any, probe: EndpointProbe, tmp_path: Path
) -> None:
    """Load: a 1-row corpus (a CSV with other column names for the column case) and a bad parameter."""
    params, words = REFUSED[case]
    dep = deploy_echo()
    corpus = tmp_path / "c.csv"
    if case.startswith("CSV"):
        corpus.write_text("name,body\nx,A readable document.\n")
    else:
        corpus = _jsonl(tmp_path / "c.jsonl", GOOD_LINE)
    with pytest.raises(ValueError) as caught:
        run_flow(dep, corpus, **params)
    message = str(caught.value)
    print(f"[{case}] {message}")
    assert all(w in message for w in words), message
    assert "\n" not in message and "validation error" not in message, message
    assert "ColumnMapping" not in message, message
    _assert_untouched(dep, probe)
