"""Decoder caches for incremental decoding: each decoder layer keeps its self-attention keys/values, grown one
step at a time, and its cross-attention keys/values, computed once per source.

- `DecoderCache` grows by concatenation and can drop, reorder and repeat batch rows (`reorder`: beam search).
- `StaticDecoderCache` keeps every tensor's shape for a whole decoding (preallocated buffers, the position as a
  1-element tensor advanced in place), so that `torch.compile` compiles one graph for every step.
- `BatchDecoderCache` holds rows at different positions (each its own length), which join and leave between
  steps: the serving engine's continuous batch (seq2seq/engine.py).

Shapes: b batch, h heads, t positions decoded, s source length, d head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor


def subsequent_mask(n_queries: int, n_keys: int, offset: int | Tensor, device: torch.device) -> Tensor:
    """Bool (n_queries, n_keys), True where query i (at position offset + i) may attend to key j."""
    query_pos = offset + torch.arange(n_queries, device=device)[:, None]
    key_pos = torch.arange(n_keys, device=device)[None, :]
    return key_pos <= query_pos


class LayerCache:
    """One decoder layer's cache: self-attention keys/values grown per step, cross-attention keys/values
    computed once per source."""

    def __init__(self) -> None:
        self.self_k: Tensor | None = None  # (b, h, t, d)
        self.self_v: Tensor | None = None
        self.cross_kv: tuple[Tensor, Tensor] | None = None  # each (b, h, s, d)

    @property
    def self_length(self) -> int:
        return 0 if self.self_k is None else self.self_k.shape[2]

    def append_self(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.self_k is None:
            self.self_k, self.self_v = k, v
        else:
            self.self_k = torch.cat([self.self_k, k], dim=2)
            self.self_v = torch.cat([self.self_v, v], dim=2)
        return self.self_k, self.self_v


class DecoderCache:
    """The decoder's incremental state: one `LayerCache` per layer and the number of positions decoded."""

    def __init__(self, n_layers: int):
        self.layers = [LayerCache() for _ in range(n_layers)]
        self.length = 0

    def self_mask(self, t: int, device: torch.device) -> Tensor | None:
        """The self-attention mask of the next t positions: None when they see every cached key (one position)
        or only each other causally (an empty cache)."""
        if self.length == 0 or t == 1:
            return None
        return subsequent_mask(t, self.length + t, self.length, device)[None, None]  # (1, 1, t, length+t)

    def reorder(self, index: Tensor) -> None:
        """Select batch rows, in this order, repeats allowed (beam search: the first step's row of each source
        becomes its k beams, then the surviving beams are kept). Cross keys/values follow; nothing is recomputed."""
        for layer in self.layers:
            if layer.self_k is not None:
                layer.self_k = layer.self_k.index_select(0, index)
                layer.self_v = layer.self_v.index_select(0, index)
            if layer.cross_kv is not None:
                layer.cross_kv = tuple(kv.index_select(0, index) for kv in layer.cross_kv)


class StaticDecoderCache:
    """A decoder cache whose tensors keep their shapes for a whole decoding, so that every step runs the same
    graph and `torch.compile` compiles it once (`generation.compiled_step`): self-attention keys/values go into
    buffers preallocated for `capacity` positions, attention is masked past the current position, and that
    position is a 1-element tensor, advanced in place. The cross-attention keys/values are computed up front.
    Rows are never dropped or reordered; batch and source length are fixed at construction."""

    def __init__(self, model, encoder_out: Tensor, capacity: int):
        """model: the `Transformer` whose decoder layers project the cross-attention keys/values."""
        config = model.config
        if config.positions == "learned" and capacity > config.max_seq_len:
            raise ValueError(f"a static cache of {capacity} positions exceeds max_seq_len={config.max_seq_len} "
                             f"of the learned positional embedding")
        model.extend_positions(capacity)
        self.capacity = capacity
        self.length = torch.zeros(1, dtype=torch.long, device=encoder_out.device)
        shape = (encoder_out.shape[0], config.n_heads, capacity, config.head_dim)
        self.layers = [StaticLayerCache(self, encoder_out.new_zeros(shape), encoder_out.new_zeros(shape),
                                        layer.cross_attn.project_kv(encoder_out)) for layer in model.decoder.layers]

    def self_mask(self, t: int, device: torch.device) -> Tensor:
        return subsequent_mask(t, self.capacity, self.length, device)[None, None]  # (1, 1, t, capacity)


class StaticLayerCache:
    """One decoder layer's part of a `StaticDecoderCache`, with `LayerCache`'s interface."""

    def __init__(self, cache: StaticDecoderCache, keys: Tensor, values: Tensor, cross_kv: tuple[Tensor, Tensor]):
        self.cache = cache
        self.self_k, self.self_v = keys, values  # (b, h, capacity, d)
        self.cross_kv = cross_kv

    @property
    def self_length(self) -> Tensor:
        return self.cache.length

    def append_self(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        index = self.cache.length + torch.arange(k.shape[2], device=k.device)
        self.self_k.index_copy_(2, index, k)
        self.self_v.index_copy_(2, index, v)
        return self.self_k, self.self_v


class BatchDecoderCache:
    """A cache whose rows are separate requests at different positions: row r has decoded `length[r]` tokens,
    its self-attention keys/values sit in a buffer of `capacity` positions, and its cross-attention keys/values in
    a buffer as long as the longest source in the batch (masked past its own). Rows are added (`extend`) and
    dropped (`keep`) between steps; each step decodes one token per row."""

    def __init__(self, n_layers: int, capacity: int):
        self.capacity = capacity
        self.length: Tensor | None = None  # (b,)
        self.layers = [BatchLayerCache(self) for _ in range(n_layers)]

    @property
    def size(self) -> int:
        return 0 if self.length is None else len(self.length)

    def self_mask(self, t: int, device: torch.device) -> Tensor:
        if t != 1:
            raise ValueError("a batch cache decodes one position per step")
        keys = torch.arange(self.capacity, device=device)
        return (keys[None, :] <= self.length[:, None])[:, None, None, :]  # (b, 1, 1, capacity)

    def extend(self, cross_kv: list[tuple[Tensor, Tensor]]) -> None:
        """Add rows with nothing decoded yet, given each layer's cross-attention keys/values (n, h, s, d)."""
        k0 = cross_kv[0][0]
        n, h, _, d = k0.shape
        new_length = torch.zeros(n, dtype=torch.long, device=k0.device)
        self.length = new_length if self.length is None else torch.cat([self.length, new_length])
        for layer, (k, v) in zip(self.layers, cross_kv, strict=True):
            empty = k.new_zeros(n, h, self.capacity, d)
            if layer.self_k is None:
                layer.self_k, layer.self_v, layer.cross_kv = empty, empty.clone(), (k, v)
                continue
            layer.self_k = torch.cat([layer.self_k, empty])
            layer.self_v = torch.cat([layer.self_v, empty.clone()])
            old_k, old_v = layer.cross_kv
            s = max(old_k.shape[2], k.shape[2])
            layer.cross_kv = (torch.cat([pad_positions(old_k, s), pad_positions(k, s)]),
                              torch.cat([pad_positions(old_v, s), pad_positions(v, s)]))

    def keep(self, index: Tensor) -> None:
        """Keep rows `index`, in that order."""
        self.length = self.length.index_select(0, index)
        for layer in self.layers:
            layer.self_k = layer.self_k.index_select(0, index)
            layer.self_v = layer.self_v.index_select(0, index)
            layer.cross_kv = tuple(kv.index_select(0, index) for kv in layer.cross_kv)


class BatchLayerCache:
    """One decoder layer's part of a `BatchDecoderCache`, with `LayerCache`'s interface."""

    def __init__(self, cache: BatchDecoderCache):
        self.cache = cache
        self.self_k: Tensor | None = None  # (b, h, capacity, d)
        self.self_v: Tensor | None = None
        self.cross_kv: tuple[Tensor, Tensor] | None = None  # each (b, h, s, d)

    @property
    def self_length(self) -> Tensor:
        return self.cache.length

    def append_self(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        rows = torch.arange(k.shape[0], device=k.device)
        self.self_k[rows, :, self.cache.length] = k[:, :, 0]
        self.self_v[rows, :, self.cache.length] = v[:, :, 0]
        return self.self_k, self.self_v


def pad_positions(x: Tensor, length: int) -> Tensor:
    """(b, h, s, d) zero-padded to `length` positions."""
    return torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[2]))
