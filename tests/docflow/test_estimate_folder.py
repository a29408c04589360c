"""`docflow estimate DIR --json` on localcloud with no endpoint deployed: what docflow makes of
the folder, per format and per reason, and what tokens and cost need."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from benchmarks import documents as make
from docflow.cli import main
from tasks.settings import Profile


def test_estimate_of_a_folder_without_an_endpoint(
    profile: Profile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("a.md", "# A\n\nMember text.")
        archive.writestr("empty.txt", "")
    files = {
        "LICENSE": b"Permission is hereby granted, free of charge.\n",
        "README.gz": gzip.compress(b"Read me first.\n"),
        "report.pdf": make.pdf_bytes("The annual report sentence."),
        "bundle.zip": bundle.getvalue(),
        "empty-1.txt": b"",
        "empty-2.txt": b"",
        "logo.png": b"\x89PNG not really",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    path = tmp_path / "profile.yaml"  # the test's profile: its endpoint was never deployed
    path.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
    assert (
        main(["estimate", str(folder), "--profile", str(path), "--json", "--exclude", "*.png"]) == 0
    )
    survey = json.loads(capsys.readouterr().out)
    assert survey["documents"] == 7 and (survey["accepted"], survey["rejected"]) == (4, 3)
    assert survey["accepted_by_format"] == {"text": 2, "pdf": 1, "markdown": 1}
    assert survey["rejected_by_reason"] == {
        "file … is empty (0 bytes); fill it in or move it out of the folder given as `corpus`": 3
    }
    assert survey["excluded"] == {"*.png": 1}
    assert "--endpoint" in survey["note"] and "--model" in survey["note"]
    # The same as text, for a person (no --exclude: logo.png is read, and rejected).
    assert main(["estimate", str(folder), "--profile", str(path)]) == 0
    text = capsys.readouterr().out
    assert "8 documents, 4 accepted, 4 rejected" in text  # logo.png not left out this time
    assert "is not a readable image" in text and "need the model's tokenizer" in text
