"""input_fn, output_fn and the pure helpers of the handler: no model needed."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import request_contract
import static_batches

from tasks.model.archive import code_files
from tests.inference.conftest import HANDLER_PATH, jsonl


def _errors(entries: list[object]) -> dict[str, str]:
    return {e.doc_id: e.error for e in entries if hasattr(e, "error")}  # type: ignore[attr-defined]


def _imported_roots(files: list[Path]) -> set[str]:
    roots: set[str] = set()
    for node in (n for f in files for n in ast.walk(ast.parse(f.read_text()))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _requirement_names(path: Path) -> set[str]:
    lines = path.read_text().splitlines()
    names = {re.split(r"[=<>!~ ;\[]", line.strip())[0] for line in lines if line.strip()}
    return {name for name in names if name and not name.startswith("#")}


def test_handler_imports_only_stdlib_torch_transformers_its_siblings_and_requirements() -> None:
    code_dir = HANDLER_PATH.parent
    shipped = [code_dir / name for name in code_files(code_dir) if name.endswith(".py")]
    siblings = {path.stem for path in shipped}
    assert {"request_contract", "loaded_model", "engine_core", "generator"} <= siblings
    third_party = _imported_roots(shipped) - set(sys.stdlib_module_names) - siblings
    required = _requirement_names(code_dir / "requirements.txt")
    assert third_party <= {"torch", "transformers", "safetensors"} | required, third_party
    # each listed package is installed at every instance start (or vendored: package_model wheels)
    assert required == {"xgrammar", "apache-tvm-ffi"}


def test_the_serving_image_server_imports_only_what_its_image_installs() -> None:
    """container_server.py is the image's, not the artifact's: its own requirements."""
    from tasks.model.archive import IMAGE_ONLY

    code_dir = HANDLER_PATH.parent
    siblings = {Path(name).stem for name in code_files(code_dir) if name.endswith(".py")}
    server = [code_dir / name for name in IMAGE_ONLY]
    third_party = _imported_roots(server) - set(sys.stdlib_module_names) - siblings
    image = _requirement_names(
        Path(__file__).parents[2] / "docker" / "serving" / "requirements.txt"
    )
    assert third_party and third_party <= image, (third_party, image)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/jsonlines",
        "application/x-ndjson",
        "application/jsonl",
        "application/JSONLines; charset=utf-8",
        None,
    ],
)
def test_jsonlines_content_types(handler: ModuleType, content_type: str | None) -> None:
    body = jsonl(
        [{"id": "a", "prompt": "hi"}, {"id": "b", "messages": [{"role": "user", "content": "yo"}]}]
    )
    entries = handler.input_fn(body, content_type)
    assert [e.doc_id for e in entries] == ["a", "b"]
    assert entries[0].prompt == "hi" and entries[1].messages == [{"role": "user", "content": "yo"}]


def test_bad_lines_become_rejected_entries_in_place(handler: ModuleType) -> None:
    body = (
        jsonl(
            [
                {"id": "ok", "prompt": "fine"},
                "{not json",
                '"a string"',
                {"prompt": "no id"},
                {"id": 7, "prompt": "numeric id"},
                {"id": "empty", "prompt": "   "},
                {"id": "both", "prompt": "x", "messages": [{"role": "user", "content": "y"}]},
                {"id": "neither"},
                {"id": "badmsg", "messages": [{"role": "user"}]},
                {"id": "nomsg", "messages": []},
                {"id": "emptymsg", "messages": [{"role": "user", "content": ""}]},
                {"id": "last", "prompt": "also fine"},
            ]
        )
        + b"\n   \n"
    )
    entries = handler.input_fn(body, "application/jsonlines")
    ids = [e.doc_id for e in entries]
    assert ids == ["ok", "line 2", "line 3", "line 4", "line 5", "empty", "both", "neither",
                   "badmsg", "nomsg", "emptymsg", "last"]  # fmt: skip
    errors = _errors(entries)
    assert set(errors) == set(ids) - {"ok", "last"}
    assert "line 2 is not valid JSON" in errors["line 2"]
    assert "not a JSON object" in errors["line 3"]
    assert "no 'id'" in errors["line 4"] and "no 'id'" in errors["line 5"]
    assert "empty prompt" in errors["empty"] and "empty prompt" in errors["emptymsg"]
    assert "exactly one of" in errors["both"] and "exactly one of" in errors["neither"]
    assert "messages[0]" in errors["badmsg"] and "non-empty list" in errors["nomsg"]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"max_tokens": 5}, "unknown parameter(s) ['max_tokens']"),
        ({"max_new_tokens": 0}, "max_new_tokens=0 must be >= 1"),
        ({"max_new_tokens": "5"}, "max_new_tokens must be an integer"),
        ({"do_sample": "yes"}, "do_sample must be true or false"),
        ({"do_sample": True, "temperature": 0}, "temperature=0 must be > 0.0"),
        ({"do_sample": True, "top_p": 1.5}, "top_p=1.5 must be in (0.0, 1.0]"),
        ({"stop": ["ok", ""]}, "stop must be a non-empty string"),
        ({"stop": 3}, "stop must be a non-empty string"),
        ({"seed": -1}, "seed=-1 must be >= 0"),
        ([1, 2], "parameters must be a JSON object"),
    ],
)
def test_bad_parameters_reject_the_document(
    handler: ModuleType, parameters: object, message: str
) -> None:
    (entry,) = handler.input_fn(jsonl([{"id": "d", "prompt": "x", "parameters": parameters}]), None)
    assert entry.doc_id == "d"
    assert message in entry.error


def test_parameter_defaults_and_env(handler: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    params = request_contract.parse_params(None)
    assert (params.max_new_tokens, params.do_sample, params.stop) == (128, False, ())
    monkeypatch.setenv("DOCFLOW_MAX_NEW_TOKENS", "17")
    assert request_contract.parse_params({}).max_new_tokens == 17
    assert request_contract.parse_params({"max_new_tokens": 3}).max_new_tokens == 3
    # Sampling knobs are meaningless when greedy: they must not split micro-batches.
    greedy = request_contract.parse_params({"temperature": 0.5, "seed": 3, "top_k": 4})
    assert greedy.key() == request_contract.parse_params({}).key()
    assert request_contract.parse_params({"stop": "x"}).stop == ("x",)
    monkeypatch.setenv("DOCFLOW_MAX_NEW_TOKENS", "lots")
    with pytest.raises(ValueError, match="DOCFLOW_MAX_NEW_TOKENS='lots' is not an integer"):
        request_contract.parse_params({})


def test_unreadable_bodies_raise(handler: ModuleType) -> None:
    with pytest.raises(ValueError, match="not UTF-8"):
        handler.input_fn(b'{"id": "a", "prompt": "\xff\xfe"}\n', "application/jsonlines")
    with pytest.raises(ValueError, match="unsupported content type 'text/csv'"):
        handler.input_fn(b"id,prompt\na,b\n", "text/csv")
    with pytest.raises(ValueError, match="no documents"):
        handler.input_fn(b"\n\n", "application/jsonlines")
    with pytest.raises(ValueError, match="not valid JSON"):
        handler.input_fn(b'{"inputs": ', "application/json")
    with pytest.raises(ValueError, match='look like {"inputs"'):
        handler.input_fn(b'{"id": "a", "text": "x"}', "application/json")


def test_one_request_contract_inputs_prompt_and_messages_in_both_types(
    handler: ModuleType,
) -> None:
    """application/json takes prompt/messages too, and a JSON Lines document takes inputs."""
    chat = [{"role": "user", "content": "hi"}]
    (as_prompt,) = handler.input_fn(b'{"id": "a", "prompt": "x"}', "application/json")
    assert (as_prompt.doc_id, as_prompt.prompt) == ("a", "x")
    (as_messages,) = handler.input_fn(json.dumps({"messages": chat}).encode(), "application/json")
    assert (as_messages.doc_id, as_messages.messages) == ("0", chat)
    lines = [
        {"id": "p", "inputs": "x"},
        {"id": "m", "inputs": chat},
        {"id": "both", "inputs": "x", "prompt": "y"},
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    prompt, messages, both = handler.input_fn(body, "application/jsonlines")
    assert (prompt.doc_id, prompt.prompt) == ("p", "x") and messages.messages == chat
    assert "not several" in both.error


def test_single_json_request_forms(handler: ModuleType) -> None:
    (single,) = handler.input_fn(
        b'{"inputs": "hello", "parameters": {"max_new_tokens": 4}}', "application/json"
    )
    assert (single.doc_id, single.prompt, single.params.max_new_tokens) == ("0", "hello", 4)
    chat = json.dumps({"inputs": [{"role": "user", "content": "hi"}]}).encode()
    (messages,) = handler.input_fn(chat, "application/json; charset=utf-8")
    assert messages.doc_id == "0" and messages.messages == [{"role": "user", "content": "hi"}]
    many = handler.input_fn(b'{"inputs": ["a", "b", ""]}', "application/json")
    assert [e.doc_id for e in many] == ["0", "1", "2"]
    assert "empty prompt" in many[2].error


def test_output_fn_formats(handler: ModuleType) -> None:
    rows = [{"id": "a", "text": "é", "prompt_tokens": 1, "completion_tokens": 2, "finish_reason": "stop"},
            {"id": "b", "error": "bad"}]  # fmt: skip
    out = handler.output_fn(rows, "application/jsonlines")
    assert out.endswith("\n") and [json.loads(line) for line in out.splitlines()] == rows
    assert handler.output_fn(rows, None) == out == handler.output_fn(rows, "*/*")
    assert json.loads(handler.output_fn(rows[:1], "application/json")) == rows[0]
    assert json.loads(handler.output_fn(rows, "application/json")) == rows
    with pytest.raises(ValueError, match="unsupported accept type 'text/csv'"):
        handler.output_fn(rows, "text/csv")


def _decode(ids: object) -> str:
    return "".join(chr(ord("a") + int(i)) for i in ids)  # type: ignore[attr-defined]


def test_finish_counts_tokens_up_to_and_including_eos(handler: ModuleType) -> None:
    eos, pad = [25], 25
    # Stopped at EOS after 3 tokens; the rest is padding from longer rows of the batch.
    assert request_contract.finish([0, 1, 2, eos[0], pad, pad], eos, None, (), _decode) == (
        "abc",
        4,
        "stop",
    )
    # Ran to max_new_tokens.
    assert request_contract.finish([0, 1, 2, 3], eos, None, (), _decode) == ("abcd", 4, "length")
    # EOS as the very last allowed token is still "stop".
    assert request_contract.finish([0, eos[0]], eos, None, (), _decode) == ("a", 2, "stop")
    # Several EOS ids (Llama 3 style).
    assert request_contract.finish([0, 24, 25], [25, 24], None, (), _decode) == ("a", 2, "stop")


def test_finish_with_stop_strings(handler: ModuleType) -> None:
    eos = [25]
    # "cd" completed by the 4th token: text ends before it, 4 tokens counted, padding after.
    assert request_contract.finish([0, 1, 2, 3, 25, 25], eos, 4, ("cd",), _decode) == (
        "ab",
        4,
        "stop",
    )
    # EOS before the stop string's completion wins.
    assert request_contract.finish([0, 25, 2, 3], eos, 4, ("cd",), _decode) == ("a", 2, "stop")


def test_plan_batches_groups_sorts_and_caps(handler: ModuleType) -> None:
    greedy = request_contract.parse_params({"max_new_tokens": 8})
    longer = request_contract.parse_params({"max_new_tokens": 9})
    seeded = request_contract.parse_params({"do_sample": True, "seed": 1})
    docs = [request_contract.Document(str(i), p, prompt="x") for i, p in
            enumerate([greedy, greedy, longer, greedy, seeded, seeded, greedy])]  # fmt: skip
    lengths = [5, 3, 4, 9, 2, 2, 1]
    items = [(i, d, [0] * n) for i, (d, n) in enumerate(zip(docs, lengths, strict=True))]
    batches = static_batches.plan_batches(items, 3)
    shapes = sorted([[i for i, _, _ in batch] for batch in batches])
    # greedy docs 0,1,3,6 sorted by length (6:1, 1:3, 0:5, 3:9) in batches of 3; seeded alone.
    assert shapes == [[2], [3], [4], [5], [6, 1, 0]]
