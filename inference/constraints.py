"""Constrained decoding: a document's ``json_schema`` or ``choices`` as a per-token mask (xgrammar).

A grammar is compiled once per distinct constraint and model (``GrammarCache``, counted in
``compilations``); each document gets its own ``TokenMask`` (an xgrammar matcher) that masks the
logits before a token is chosen and follows the tokens chosen. The serving engine applies it in
its sampling step, the static path as a logits processor. JSON is generated without free
whitespace, so every output has one compact form and a bounded schema bounds its length.

xgrammar is imported on first use: an instance without it still serves unconstrained documents,
and a constrained one gets an error line that says what to install.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from request_contract import Params

GRAMMAR_CACHE_SIZE = 64
COMPILER_THREADS = 2


class ConstraintError(ValueError):
    """A constraint cannot be compiled or followed; the message becomes the document's error."""


class Constraint(NamedTuple):
    """What a document's output must be: JSON valid against a schema, or one of fixed strings."""

    json_schema: str | None = None  # canonical JSON text of the schema
    choices: tuple[str, ...] = ()

    @classmethod
    def of(cls, params: Params) -> Constraint | None:
        """The document's constraint, or None when its output is free text."""
        if params.json_schema is None and not params.choices:
            return None
        return cls(params.json_schema, params.choices)


def choice_grammar(choices: Sequence[str]) -> str:
    """An EBNF grammar whose only sentences are the choices (JSON string escapes are valid EBNF)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _vendored_first() -> None:
    """Put code/vendor (requirements installed at packaging time, for instances without
    internet: ``package_model(wheels=...)``) first on sys.path, once."""
    vendor = str(Path(__file__).resolve().with_name("vendor"))
    if Path(vendor).is_dir() and vendor not in sys.path:
        sys.path.insert(0, vendor)


def _xgrammar() -> Any:
    _vendored_first()
    try:
        import xgrammar
    except ImportError as exc:
        raise ConstraintError(
            "constrained output (json_schema or choices) needs the xgrammar package on the "
            f"model's instance ({exc}); list it in code/requirements.txt, or vendor it into the "
            "artifact with package_model(wheels=...) for instances without internet"
        ) from None
    return xgrammar


class GrammarCache:
    """Compiled grammars of one model, keyed by constraint; ``compilations`` counts the misses."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = list(eos_ids)
        self.compilations = 0
        self._compiled: OrderedDict[Constraint, Any] = OrderedDict()
        self._compiler: Any = None
        self._lock = threading.Lock()

    def _compiler_for_model(self) -> Any:
        if self._compiler is None:
            xgr = _xgrammar()
            info = xgr.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.eos_ids
            )
            self._compiler = xgr.GrammarCompiler(
                info, max_threads=COMPILER_THREADS, cache_enabled=False
            )
        return self._compiler

    def compiled(self, constraint: Constraint) -> Any:
        """The compiled grammar (compiling it on the first request); ConstraintError if invalid."""
        with self._lock:
            hit = self._compiled.get(constraint)
            if hit is not None:
                self._compiled.move_to_end(constraint)
                return hit
            compiler = self._compiler_for_model()
            try:
                if constraint.json_schema is not None:
                    grammar = compiler.compile_json_schema(
                        constraint.json_schema, any_whitespace=False, strict_mode=True
                    )
                else:
                    grammar = compiler.compile_grammar(choice_grammar(constraint.choices))
            except Exception as exc:  # xgrammar raises RuntimeError/ValueError for bad schemas
                raise ConstraintError(f"json_schema cannot be compiled: {exc}") from None
            self.compilations += 1
            self._compiled[constraint] = grammar
            if len(self._compiled) > GRAMMAR_CACHE_SIZE:
                self._compiled.popitem(last=False)
            return grammar

    def mask_for(self, params: Params) -> TokenMask | None:
        """A fresh mask for one document, or None when it is unconstrained."""
        constraint = Constraint.of(params)
        if constraint is None:
            return None
        return TokenMask(self.compiled(constraint), self.vocab_size)


class TokenMask:
    """One document's grammar state: which tokens may come next, advanced token by token."""

    def __init__(self, grammar: Any, vocab_size: int) -> None:
        xgr = _xgrammar()
        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(grammar)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.broken = False  # a token the grammar refused was appended (not via apply)

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """Mask ``scores`` ([1, vocab] float32 on CPU or GPU) in place: refused tokens get -inf."""
        if self.matcher.is_terminated():
            return scores
        self.matcher.fill_next_token_bitmask(self.bitmask)
        width = scores.shape[-1]
        self._xgr.apply_token_bitmask_inplace(
            scores, self.bitmask.to(scores.device, non_blocking=True), vocab_size=width
        )
        return scores

    def accept(self, token: int) -> None:
        """Advance past a chosen token (one ``apply`` allowed, so this only fails on a bug)."""
        if not self.matcher.is_terminated() and not self.matcher.accept_token(token):
            self.broken = True

    @property
    def complete(self) -> bool:
        """True when the output so far is a whole sentence of the grammar."""
        return not self.broken and (self.matcher.is_terminated() or self.matcher.is_completed())


def incomplete_error(params: Params, finish_reason: str) -> str:
    """The error line of a constrained document whose output is not a whole valid answer."""
    what = "JSON value" if params.json_schema is not None else "choice"
    if finish_reason == "length":
        return (
            f"constrained output incomplete: max_new_tokens={params.max_new_tokens} ran out "
            f"before the {what} was complete; raise max_new_tokens or bound the schema "
            "(maxLength, maxItems)"
        )
    return f"constrained output incomplete: generation stopped before the {what} was complete"


def strict_text(params: Params, text: str) -> str:
    """A JSON answer in strict JSON: the grammar lets raw control characters into strings.

    Re-serialised with the separators the grammar uses, so only those characters change (they
    become escapes) and any JSON parser reads the text.
    """
    if params.json_schema is None:
        return text
    try:
        value = json.loads(text, strict=False)
    except ValueError:
        return text
    return json.dumps(value, ensure_ascii=False)
