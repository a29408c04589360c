"""The container code under each supported image's own library versions (make test builds them).

``make container-envs`` builds one environment per image: transformers 5.5.3 (the default image)
and 4.51.3 (the older one), each with this machine's torch. The code runs there as the container
runs it: the packaged ``code/`` folder first on ``sys.path``, xgrammar vendored into
``code/vendor/`` by ``package_model``'s own vendoring, nothing of docflow's environment. Greedy
output must equal this environment's (transformers 5.25, the engine), line for line: called as
the Hugging Face toolkit calls the handler, and through the serving image's ``serve`` (its
server libraries are in these environments too).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tasks.model.vendor import vendored_code_dir
from tests.inference.conftest import HANDLER_PATH, jsonl, without_cached
from tests.inference.served import Served, lines, model_with_code

PYTHONS = os.environ.get("DOCFLOW_CONTAINER_PYTHONS", "").split()
WHEELS = os.environ.get("DOCFLOW_CONTAINER_WHEELS", "")
# transformers version -> the generator model_fn must pick there (no patched version numbers).
EXPECTED_GENERATOR = {"5": "engine", "4": "static"}

DOCS: list[dict[str, Any]] = [
    {"id": "long", "prompt": "Summarise the following document. " * 4,
     "parameters": {"max_new_tokens": 24}},
    {"id": "short", "prompt": "Hi", "parameters": {"max_new_tokens": 3}},
    {"id": "stop", "prompt": "The quick brown fox", "parameters": {"max_new_tokens": 16, "stop": ["a"]}},
    {"id": "chat", "messages": [{"role": "user", "content": "Hello there"}],
     "parameters": {"max_new_tokens": 9}},
    {"id": "label", "prompt": "Invoice or letter?",
     "parameters": {"max_new_tokens": 20, "choices": ["invoice", "letter", "other"]}},
]  # fmt: skip

SCRIPT = """
import json, sys
code, model_dir, payload = sys.argv[1:4]
sys.path.insert(0, code)  # as the inference toolkit does
import torch, transformers
torch.set_num_threads(1)
import inference
model = inference.model_fn(model_dir)
entries = inference.input_fn(open(payload, "rb").read(), "application/jsonlines")
out = inference.output_fn(inference.predict_fn(entries, model), "application/jsonlines")
grammar = sys.modules.get("xgrammar")
print(json.dumps({
    "transformers": transformers.__version__,
    "generator": model.generator.kind,
    "xgrammar": getattr(grammar, "__file__", None),
    "lines": [json.loads(line) for line in out.splitlines()],
}))
"""


def _expected(handler: ModuleType, model_dir: Path, payload: Path) -> list[dict[str, Any]]:
    """This environment's lines for the payload (the engine, transformers 5.25)."""
    here = handler.model_fn(str(model_dir))
    assert here.generator.kind == "engine"
    expected = without_cached(
        [json.loads(line) for line in handler.output_fn(
            handler.predict_fn(handler.input_fn(payload.read_bytes(), None), here), None
        ).splitlines()]
    )  # fmt: skip
    here.generator.close()
    return expected


@pytest.fixture(scope="module")
def packaged_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``code/`` as package_model ships it, with xgrammar vendored for this machine's Python 3.11."""
    out = tmp_path_factory.mktemp("artifact")
    return vendored_code_dir(
        HANDLER_PATH.parent,
        Path(WHEELS),
        out,
        platform="manylinux_2_28_x86_64",
        python_version="3.11",
    )


@pytest.mark.skipif(
    not PYTHONS, reason="make test builds the image environments (make container-envs)"
)
@pytest.mark.parametrize("python", PYTHONS)
def test_container_code_under_the_image_libraries_equals_this_environment(
    python: str,
    packaged_code: Path,
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    payload = tmp_path / "payload.jsonl"
    payload.write_bytes(jsonl(DOCS))
    for arch, model_dir in tiny_dirs.items():
        expected = _expected(handler, model_dir, payload)
        done = subprocess.run(
            [python, "-c", SCRIPT, str(packaged_code), str(model_dir), str(payload)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,  # nothing of docflow's on the path but code/
            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "terminate called" not in done.stderr
        (report,) = [json.loads(line) for line in done.stdout.splitlines()]  # nothing else printed
        major = report["transformers"].split(".")[0]
        assert report["generator"] == EXPECTED_GENERATOR[major], report
        assert str(report["xgrammar"]).startswith(str(packaged_code / "vendor")), report
        got = without_cached(report["lines"])
        for line in got + expected:
            line.pop("grammar_compilations", None)
        assert got == expected, (arch, report["transformers"])
        assert {line.get("finish_reason") for line in got} >= {"length", "stop"}


@pytest.mark.skipif(
    not PYTHONS, reason="make test builds the image environments (make container-envs)"
)
@pytest.mark.parametrize("python", PYTHONS)
def test_the_serving_image_server_under_the_image_libraries_equals_this_environment(
    python: str,
    packaged_code: Path,
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    payload = tmp_path / "payload.jsonl"
    payload.write_bytes(jsonl(DOCS))
    expected = _expected(handler, tiny_dirs["mistral"], payload)
    model_dir = model_with_code(tiny_dirs["mistral"], packaged_code, tmp_path / "model")
    server = Served(python, model_dir, tmp_path)
    try:
        server.wait_ready()
        status, _, body = server.invoke(payload.read_bytes(), content_type="application/jsonlines")
        assert status == 200, body
        got = without_cached(lines(body))
        for line in got + expected:
            line.pop("grammar_compilations", None)
        assert got == expected
        status, headers, chunks = server.stream(
            jsonl(DOCS[:1]), content_type="application/jsonlines"
        )
        assert status == 200 and headers["transfer-encoding"] == "chunked" and len(chunks) > 1
        assert lines(chunks)[-1]["generated_text"] == expected[0]["text"]
    finally:
        code, printed = server.stop()
    assert code == 0, printed[-3000:]
    assert "terminate called" not in printed
