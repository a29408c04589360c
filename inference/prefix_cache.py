"""The prefix cache: keys/values of prompt blocks already computed, and pinned session prefixes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch


class PrefixCache:
    """Keys/values of prompt blocks already computed, keyed by the whole prefix up to them (LRU)."""

    def __init__(self, max_tokens: int, block: int) -> None:
        self.max_tokens = max_tokens
        self.block = block
        self.blocks: OrderedDict[
            int, tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]
        ] = OrderedDict()
        # Exact prefixes held for open sessions (inference/sessions.py): outside the LRU, filled by
        # the first insert of a prompt that starts with them, dropped only by unpin.
        self.pinned: dict[str, tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.lock = threading.Lock()

    def pin(self, name: str, prefix: Sequence[int]) -> None:
        """Keep the keys/values of exactly ``prefix`` (once a prompt starting with it is prefilled)."""
        with self.lock:
            self.pinned[name] = (tuple(prefix), [])

    def unpin(self, name: str) -> None:
        """Forget a pinned prefix."""
        with self.lock:
            self.pinned.pop(name, None)

    def pinned_tokens(self, name: str) -> int:
        """Tokens held for a pinned prefix (0 until it was prefilled)."""
        with self.lock:
            prefix, layers = self.pinned.get(name, ((), []))
            return len(prefix) if layers else 0

    def _pinned_for(
        self, prompt: Sequence[int], longer_than: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        best: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        for prefix, layers in self.pinned.values():
            n = len(prefix)
            if layers and longer_than < n < len(prompt) and tuple(prompt[:n]) == prefix:
                best, longer_than = list(layers), n
        return best

    def _keys(self, prompt: Sequence[int], blocks: int) -> list[tuple[int, tuple[int, ...]]]:
        keys, chained = [], 0
        for n in range(blocks):
            tokens = tuple(prompt[n * self.block : (n + 1) * self.block])
            chained = hash((chained, tokens))
            keys.append((chained, tokens))
        return keys

    def lookup(self, prompt: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The longest cached prefix of ``prompt`` (whole blocks or a pinned prefix, >= 1 token left)."""
        found: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        hits: list[int] = []
        with self.lock:
            blocks = (len(prompt) - 1) // self.block if self.max_tokens >= self.block else 0
            for key, tokens in self._keys(prompt, blocks):
                entry = self.blocks.get(key)
                if entry is None or entry[0] != tokens:
                    break
                found.append(entry[1])
                hits.append(key)
            for key in reversed(hits):  # parents end up more recent than their children
                self.blocks.move_to_end(key)
            pinned = self._pinned_for(prompt, len(found) * self.block)
        if pinned is not None:
            return pinned
        if not found:
            return None
        layers = len(found[0])
        return [
            (
                torch.cat([f[layer][0] for f in found], dim=2),
                torch.cat([f[layer][1] for f in found], dim=2),
            )
            for layer in range(layers)
        ]

    def insert(
        self, prompt: Sequence[int], layers: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Remember the whole blocks of a prefilled prompt, evicting the least recently used."""
        with self.lock:
            for name, (prefix, held) in list(self.pinned.items()):
                n = len(prefix)
                if not held and n <= len(prompt) and tuple(prompt[:n]) == prefix:
                    self.pinned[name] = (
                        prefix,
                        [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in layers],
                    )
        capacity = self.max_tokens // self.block
        if capacity == 0:
            return
        keys = self._keys(prompt, min(len(prompt) // self.block, capacity))
        with self.lock:
            for n, (key, tokens) in reversed(list(enumerate(keys))):
                if key in self.blocks:
                    self.blocks.move_to_end(key)
                    continue
                cut = slice(n * self.block, (n + 1) * self.block)
                self.blocks[key] = (
                    tokens,
                    [(k[:, :, cut].clone(), v[:, :, cut].clone()) for k, v in layers],
                )
            while len(self.blocks) > capacity:
                self.blocks.popitem(last=False)

    @property
    def tokens(self) -> int:
        """Tokens held."""
        return len(self.blocks) * self.block
