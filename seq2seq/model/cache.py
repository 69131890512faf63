"""Decoder caches for incremental decoding: each decoder layer keeps its self-attention keys/values, grown one
step at a time, and its cross-attention keys/values, computed once per source.

- `DecoderCache` grows by concatenation and can drop, reorder and repeat batch rows (`reorder`: beam search).
- `StaticDecoderCache` keeps every tensor's shape for a whole decoding (preallocated buffers, the position as a
  1-element tensor advanced in place), so that `torch.compile` compiles one graph for every step.

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
