"""Key/value caches of the engine: a prompt being prefilled, a packed prefill, the running batch.

The running batch keeps its keys/values in one buffer per layer, rows left-padded and
right-aligned, so every decode step writes one column in place; a finished document frees its
row at once and the next one is written into it (vLLM's KV cache manager, without paging).
"""

from __future__ import annotations

from typing import Any

import torch


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean [rows, queries, keys] mask as the additive 4-D float mask attention takes."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class PromptCache:
    """Keys/values of one document while its prompt is prefilled (batch of one, grows by chunk)."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.layers = layers or []

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this chunk's keys/values of a layer; return the layer's whole keys/values."""
        if layer_idx < len(self.layers):
            old_k, old_v = self.layers[layer_idx]
            key, value = torch.cat([old_k, key], dim=2), torch.cat([old_v, value], dim=2)
            self.layers[layer_idx] = (key, value)
        else:
            self.layers.append((key, value))
        return key, value

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached so far."""
        return int(self.layers[0][0].shape[2]) if self.layers else 0


class PackedCache:
    """Keys/values for one packed prefill: every document's past, then the new chunks end to end."""

    def __init__(
        self, pasts: list[list[tuple[torch.Tensor, torch.Tensor]]], lengths: list[int]
    ) -> None:
        self.pasts = pasts
        self.lengths = lengths
        self.new: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the chunks' keys/values of a layer; return the pasts and them, concatenated."""
        self.new.append((key, value))
        if not any(self.pasts):
            return key, value
        keys = [p[layer_idx][0] for p in self.pasts if p] + [key]
        values = [p[layer_idx][1] for p in self.pasts if p] + [value]
        return torch.cat(keys, dim=2), torch.cat(values, dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached before this pass."""
        return sum(int(p[0][0].shape[2]) for p in self.pasts if p)

    def split(self) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each document's keys/values after the pass: its past, then its new chunk."""
        out = []
        at = 0
        for past, take in zip(self.pasts, self.lengths, strict=True):
            layers = []
            for layer, (key, value) in enumerate(self.new):
                k = key[:, :, at : at + take]
                v = value[:, :, at : at + take]
                if past:
                    k = torch.cat([past[layer][0], k], dim=2)
                    v = torch.cat([past[layer][1], v], dim=2)
                else:
                    k, v = k.contiguous(), v.contiguous()
                layers.append((k, v))
            out.append(layers)
            at += take
        return out


class BatchCache:
    """The running batch's keys/values: one row per document, right-aligned, written in place."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.valid = torch.zeros((0, 0), dtype=torch.bool)
        self.width = 0  # columns in use; the next token of every row goes to this column

    @property
    def capacity(self) -> int:
        """Columns allocated."""
        return int(self.valid.shape[1])

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's key/value column of a layer; return the layer's keys/values so far."""
        end = self.width + 1
        self.keys[layer_idx][:, :, self.width : end] = key
        self.values[layer_idx][:, :, self.width : end] = value
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns in use."""
        return self.width

    def layout(
        self,
        keep: list[int],
        lengths: list[int],
        new: list[list[tuple[torch.Tensor, torch.Tensor]]],
        columns: int,
    ) -> None:
        """Rebuild with rows ``keep`` (their ``lengths``) plus ``new`` prompts, ``columns`` wide."""
        new_lengths = [int(n[0][0].shape[2]) for n in new]
        width = max([*lengths, *new_lengths, 0])
        rows = len(keep) + len(new)
        like = new[0][0][0] if new else self.keys[0]
        layers = len(new[0]) if new else len(self.keys)
        heads, dim, dtype, device = like.shape[1], like.shape[3], like.dtype, like.device
        del like
        index = torch.tensor(keep, dtype=torch.long, device=device)
        shift = self.width - width  # leading columns that no kept row uses (>= 0 or < 0)
        src = slice(max(shift, 0), self.width)
        dst = slice(max(-shift, 0), width)
        # One allocation for every layer: large enough to be mapped (and unmapped) on its own,
        # so a re-layout returns the old cache to the system instead of fragmenting the heap.
        buffer = torch.zeros((layers, 2, rows, heads, columns, dim), dtype=dtype, device=device)
        keys, values = [], []
        for layer in range(layers):
            k, v = buffer[layer, 0], buffer[layer, 1]
            if keep:
                k[: len(keep), :, dst] = self.keys[layer][:, :, src].index_select(0, index)
                v[: len(keep), :, dst] = self.values[layer][:, :, src].index_select(0, index)
            for row, prompt in enumerate(new, start=len(keep)):
                pk, pv = prompt[layer]
                k[row, :, width - pk.shape[2] : width] = pk[0]
                v[row, :, width - pv.shape[2] : width] = pv[0]
            keys.append(k)
            values.append(v)
        valid = torch.zeros((rows, columns), dtype=torch.bool, device=device)
        for row, length in enumerate([*lengths, *new_lengths]):
            valid[row, width - length : width] = True
        self.keys, self.values, self.valid, self.width = keys, values, valid, width

    def place(self, row: int, prompt: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write a prefilled prompt into a free row, right-aligned at the current width."""
        length = int(prompt[0][0].shape[2])
        for layer, (pk, pv) in enumerate(prompt):
            self.keys[layer][row, :, self.width - length : self.width] = pk[0]
            self.values[layer][row, :, self.width - length : self.width] = pv[0]
        self.valid[row] = False
        self.valid[row, self.width - length : self.width] = True

    def step_mask(self, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
        """The decode step's 4-D mask: each row sees its own tokens (within ``window``) and the new column."""
        allowed = self.valid[:, : self.width + 1].clone()
        allowed[:, self.width] = True
        if window is not None and self.width + 1 > window:
            allowed[:, : self.width + 1 - window] = False
        return additive_mask(allowed[:, None, :], dtype)

    def advance(self) -> None:
        """The step's column is written: count it."""
        self.valid[:, self.width] = True
        self.width += 1

    def clear(self) -> None:
        """Drop everything (after a failed step)."""
        self.__init__()  # type: ignore[misc]
