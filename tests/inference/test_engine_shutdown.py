"""The engine thread shuts down cleanly: every document ends, and nothing aborts at exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import request_contract

from tests.inference.conftest import HANDLER_PATH

LONG = {"prompt": "hello there " * 4, "parameters": {"max_new_tokens": 200}}


def _items(handler: ModuleType, model: Any, count: int) -> list[Any]:
    docs = [request_contract.parse_document({"id": f"d{i}", **LONG}, "x") for i in range(count)]
    results: list[Any] = [None] * count
    items = handler._runnable(docs, model, results)
    assert len(items) == count, results
    return items


def test_close_cancels_running_and_queued_documents(
    handler: ModuleType, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCFLOW_MAX_SEQUENCES", "2")  # two run, the others wait
    model = handler.model_fn(str(tiny_dirs["mistral"]))
    engine = model.generator
    handles = engine.submit(_items(handler, model, 4))
    assert engine.wait_until(lambda e: e.snapshot()["running"] == 2)
    engine.close()
    assert engine.thread is not None and not engine.thread.is_alive()
    lines = [h.line() for h in handles]  # none hangs: all four ended
    assert [line["error"] for line in lines] == ["cancelled: the model server is shutting down"] * 4
    (late,) = engine.submit(_items(handler, model, 1))
    assert late.wait(30) and "shutting down" in late.line()["error"]


SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
import inference
model = inference.model_fn(sys.argv[2])
docs = [{"id": f"d{i}", "prompt": "hello there " * (i + 1), "parameters": {"max_new_tokens": 200}}
        for i in range(4)]
items = inference._runnable(docs, model, [None] * len(docs))
model.generator.submit(items)
assert model.generator.wait_until(lambda e: e.snapshot()["running"] > 0)
print("exiting while generating")
"""


def test_exiting_while_the_engine_generates_prints_nothing(tiny_dirs: dict[str, Path]) -> None:
    """Before: ``terminate called without an active exception`` and exit status 134."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(HANDLER_PATH.parent), str(tiny_dirs["mistral"])],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "exiting while generating\n"
    assert "terminate called" not in done.stderr
