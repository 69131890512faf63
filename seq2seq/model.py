"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

Classes follow the paper's sections: 3.1 `Encoder` / `Decoder` stacks of `EncoderLayer` / `DecoderLayer`,
3.2 `MultiHeadAttention`, 3.3 `PositionwiseFeedForward`, 3.4 `TokenEmbedding` and the shared pre-softmax
projection, 3.5 `SinusoidalPositionalEncoding`. Options beyond the paper (pre-norm, RMSNorm, learned or
rotary positions, GELU or SwiGLU) are switches in `ModelConfig`; the defaults are the paper's.

Tensor dimensions in shape comments: b batch, s source length, t target length, n any length,
h heads, d head dim, D d_model, F d_ff, V vocabulary.

Padding masks are bool tensors of shape (b, n) that are True at padding positions (PyTorch's
`key_padding_mask` convention); `None` means the batch has no padding.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from seq2seq.config import from_dict, to_dict
from seq2seq.cross_entropy import linear_cross_entropy


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    d_model: int = 512
    n_heads: int = 8
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    max_seq_len: int = 512
    pad_id: int = 0
    norm_placement: Literal["post", "pre"] = "post"  # post: the paper, LayerNorm(x + Sublayer(x))
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    positions: Literal["sinusoidal", "learned", "rotary"] = "sinusoidal"
    activation: Literal["relu", "gelu", "swiglu"] = "relu"
    tie_embeddings: bool = True  # 3.4: encoder input, decoder input and pre-softmax share one matrix
    norm_eps: float = 1e-5
    rotary_base: float = 10000.0
    copy_attention: bool = False  # a pointer-generator head that can copy source tokens (CopyAttention)
    source_ngrams: tuple[int, ...] = ()  # orders of hashed n-gram embeddings on the encoder input (NGramEmbedding)
    ngram_buckets: int = 32768  # rows of each hashed table (orders above 1)
    ngram_dropout: float = 0.5  # in training, each source position's n-gram vector is dropped with this probability

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff",
                     "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig.d_model ({self.d_model}) must be divisible by "
                             f"ModelConfig.n_heads ({self.n_heads})")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"ModelConfig.positions 'rotary' needs an even head dimension, "
                             f"got d_model/n_heads = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"ModelConfig.pad_id must be in [0, vocab_size), got {self.pad_id!r}")
        if not isinstance(self.copy_attention, bool):
            raise ValueError(f"ModelConfig.copy_attention must be true or false, got {self.copy_attention!r}")
        self.source_ngrams = tuple(self.source_ngrams)
        check_ngram_settings(self.source_ngrams, self.ngram_buckets, self.ngram_dropout,
                             ("ModelConfig.source_ngrams", "ModelConfig.ngram_buckets", "ModelConfig.ngram_dropout"))
        if self.norm_eps <= 0 or self.rotary_base <= 0:
            raise ValueError("ModelConfig.norm_eps and ModelConfig.rotary_base must be positive")
        choices = {"norm_placement": ("post", "pre"), "norm": ("layernorm", "rmsnorm"),
                   "positions": ("sinusoidal", "learned", "rotary"), "activation": ("relu", "gelu", "swiglu")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name} must be one of {', '.join(allowed)}; "
                                 f"got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data, "model")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def check_ngram_settings(orders, buckets, dropout, names: tuple[str, str, str]) -> None:
    """Raise a ValueError naming the setting (`names`: what orders, buckets and dropout are called where they
    come from) unless orders are distinct positive integers, buckets a positive integer and dropout in [0, 1)."""
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in orders) or len(set(orders)) != len(orders):
        raise ValueError(f"{names[0]} must be distinct n-gram orders (positive integers), got {list(orders)!r}")
    if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets <= 0:
        raise ValueError(f"{names[1]} must be a positive integer, got {buckets!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{names[2]} must be in [0, 1), got {dropout!r}")


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


# ---------------------------------------------------------------------------------------------------------
# 3.5 Positional encoding


def sinusoid_table(length: int, dim: int, base: float = 10000.0) -> Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/dim)), PE(pos, 2i+1) = cos(...). Shape (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = position * inv_freq  # (n, dim/2)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


class SinusoidalPositionalEncoding(nn.Module):
    """3.5 Fixed sinusoids added to the embeddings; extends itself past max_seq_len when asked."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.d_model = config.d_model
        self.register_buffer("table", sinusoid_table(config.max_seq_len, config.d_model), persistent=False)

    def extend(self, length: int) -> None:
        if length > self.table.shape[0]:
            self.table = sinusoid_table(2 * length, self.d_model).to(self.table.device)

    def forward(self, length: int, offset: int | Tensor = 0) -> Tensor:
        if isinstance(offset, Tensor):  # a static-cache step: the table already reaches the cache's capacity
            return rows_from(self.table, offset, length)
        self.extend(offset + length)
        return self.table[offset:offset + length]  # (n, D)


class LearnedPositionalEmbedding(nn.Module):
    """A learned vector per position (the paper's 3.5 alternative, "nearly identical results")."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.max_seq_len = config.max_seq_len
        self.weight = nn.Parameter(torch.empty(config.max_seq_len, config.d_model))

    def forward(self, length: int, offset: int | Tensor = 0) -> Tensor:
        if isinstance(offset, Tensor):  # a static-cache step, whose capacity was checked against max_seq_len
            return rows_from(self.weight, offset, length)
        if offset + length > self.max_seq_len:
            raise ValueError(f"sequence of {offset + length} positions exceeds max_seq_len="
                             f"{self.max_seq_len} of the learned positional embedding")
        return self.weight[offset:offset + length]


def rows_from(table: Tensor, offset: Tensor, length: int) -> Tensor:
    """table[offset:offset + length] for a position held in a 1-element tensor: a compiled decoding step reads
    its position from a tensor, so that one graph serves every step."""
    return table.index_select(0, offset + torch.arange(length, device=table.device))


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al., 2021): rotates query/key pairs by position inside self-attention instead of
    adding a vector to the embeddings. Cross-attention gets no rotation: source and target positions
    are not on one axis."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.base = config.rotary_base
        self._build(config.max_seq_len)

    def _build(self, length: int, device: torch.device | None = None) -> None:
        inv_freq = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq  # (n, d/2)
        angles = torch.cat([angles, angles], dim=-1)  # (n, d)
        self.register_buffer("cos", angles.cos().to(device), persistent=False)
        self.register_buffer("sin", angles.sin().to(device), persistent=False)

    def extend(self, length: int) -> None:
        if length > self.cos.shape[0]:
            self._build(2 * length, self.cos.device)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """Rotate x of shape (b, h, n, d) as if its first position were `offset`."""
        length = x.shape[-2]
        if isinstance(offset, Tensor):  # a static-cache step: the tables already reach the cache's capacity
            cos, sin = rows_from(self.cos, offset, length).to(x.dtype), rows_from(self.sin, offset, length).to(x.dtype)
        else:
            self.extend(offset + length)
            cos = self.cos[offset:offset + length].to(x.dtype)
            sin = self.sin[offset:offset + length].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# ---------------------------------------------------------------------------------------------------------
# 3.4 Embeddings and softmax


class TokenEmbedding(nn.Module):
    """3.4 Learned token embeddings, multiplied by sqrt(d_model)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.vocab_size, config.d_model))
        self.scale = math.sqrt(config.d_model)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight) * self.scale


class NGramEmbedding(nn.Module):
    """Hashed n-gram embeddings of the source, not in the paper: for each order n in `config.source_ngrams`,
    the n tokens ending at each position are hashed into one of `ngram_buckets` rows of a table of their own,
    and the rows found are added to the token embeddings (the over-tokenized input of Huang et al., 2025,
    https://arxiv.org/abs/2501.16975; fastText's hashed bigrams, Joulin et al., 2016). A small model's
    vocabulary, learnt from Shakespeare, splits a modern word into pieces that mean nothing alone; a bigram's row
    gives the encoder "area man" or "trump's" whole, as the n-gram features of a linear classifier do. Order 1
    is not hashed: its table has a row per token, a second input embedding that, unlike the first, is not tied
    to the output projection.

    The tables start at zero, so adding them to a trained model (`with_source_ngrams`) leaves its outputs as they
    were. In training each position's n-gram vector is dropped with probability `ngram_dropout` (and the rest
    scaled up), so the model keeps reading the tokens too rather than memorising n-grams (README, Fine-tuning).
    Positions before the start read as padding; a position's vector depends on no later token, so right padding
    changes nothing."""

    MODULUS = 2_147_483_647  # 2^31 - 1: products stay inside int64
    MULTIPLIER = 1_000_003

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.orders, self.pad_id = config.source_ngrams, config.pad_id
        self.sizes = [ngram_table_rows(config, order) for order in self.orders]
        self.offsets = [sum(self.sizes[:k]) for k in range(len(self.orders))]
        self.dropout = config.ngram_dropout
        self.weight = nn.Parameter(torch.zeros(sum(self.sizes), config.d_model))
        self.scale = math.sqrt(config.d_model)

    def rows(self, ids: Tensor) -> Tensor:
        """ids (b, s) -> the table row of each order's n-gram ending at each position, (b, s, orders)."""
        ids, rows = ids.long(), []
        for order, size, offset in zip(self.orders, self.sizes, self.offsets):
            code = ids
            for back in range(1, order):
                earlier = F.pad(ids, (back, 0), value=self.pad_id)[:, :ids.shape[1]]
                code = (code * self.MULTIPLIER + earlier + 1) % self.MODULUS
            rows.append(code % size + offset)
        return torch.stack(rows, -1)

    def forward(self, ids: Tensor) -> Tensor:
        """ids (b, s) -> the sum of each position's n-gram rows (b, s, D), scaled like token embeddings."""
        x = F.embedding(self.rows(ids), self.weight).sum(-2) * self.scale
        if self.training and self.dropout > 0:
            keep = torch.rand(ids.shape, device=ids.device) >= self.dropout
            x = x * keep.unsqueeze(-1).to(x.dtype) / (1 - self.dropout)
        return x


def ngram_table_rows(config: ModelConfig, order: int) -> int:
    """Rows of the n-gram table of this order: one per token for unigrams, `ngram_buckets` for longer n-grams."""
    return config.vocab_size if order == 1 else config.ngram_buckets


# ---------------------------------------------------------------------------------------------------------
# 3.2 Attention


class MultiHeadAttention(nn.Module):
    """3.2.2 Multi-head scaled dot-product attention (3.2.1), through `F.scaled_dot_product_attention`
    so CUDA picks flash / memory-efficient kernels. Self-attention projects Q, K, V with one fused matmul;
    cross-attention projects Q from the decoder and K, V (once per source) from the encoder output."""

    def __init__(self, config: ModelConfig, cross: bool):
        super().__init__()
        self.n_heads = config.n_heads
        self.cross = cross
        d_model = config.d_model
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.n_heads, -1).transpose(1, 2)  # (b, h, n, d)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder output, each (b, h, s, d)."""
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        memory: Tensor | None = None,
        rotary: RotaryEmbedding | None = None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        """x (b, n, D) -> (b, n, D). attn_mask: bool (b, 1, n, n_keys), True where attention is allowed."""
        if self.cross:
            q = self.split_heads(self.q_proj(x))
            if cache is not None:
                if cache.cross_kv is None:
                    cache.cross_kv = self.project_kv(memory)
                k, v = cache.cross_kv
            else:
                k, v = self.project_kv(memory)
        else:
            q, k, v = (self.split_heads(part) for part in self.qkv_proj(x).chunk(3, dim=-1))
            offset = cache.self_length if cache is not None else 0
            if rotary is not None:
                q, k = rotary(q, offset), rotary(k, offset)
            if cache is not None:
                k, v = cache.append_self(k, v)
        # On a CPU without AMX, SDPA's flash kernel is slower in bf16 than the matmul-based one: forward and
        # backward at (32, 4, 128, 64) take 34 against 28 ms, causal 38 against 24 (fp32 keeps flash: 26 vs 31).
        low_precision_cpu = q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
        with sdpa_kernel(SDPBackend.MATH) if low_precision_cpu else nullcontext():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


# ---------------------------------------------------------------------------------------------------------
# 3.3 Position-wise feed-forward networks


class PositionwiseFeedForward(nn.Module):
    """3.3 FFN(x) = max(0, x W1 + b1) W2 + b2; GELU, or SwiGLU (Shazeer, 2020) with a fused gate."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.activation = config.activation
        gated = config.activation == "swiglu"
        self.w1 = nn.Linear(config.d_model, (2 if gated else 1) * config.d_ff)
        self.w2 = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        h = self.w1(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.activation == "gelu":
            h = F.gelu(h)
        else:
            h = F.relu(h)
        return self.w2(h)


# ---------------------------------------------------------------------------------------------------------
# 3.1 Encoder and decoder stacks


class SublayerConnection(nn.Module):
    """Residual connection around a sub-layer, with dropout on the sub-layer's output (5.4).
    post (the paper): LayerNorm(x + Dropout(Sublayer(x))); pre: x + Dropout(Sublayer(LayerNorm(x)))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.norm = make_norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.pre_norm:
            return self.add_dropped(x, sublayer(self.norm(x)))
        return self.norm(self.add_dropped(x, sublayer(x)))

    def add_dropped(self, x: Tensor, update: Tensor) -> Tensor:
        """x + Dropout(update). On CPU as one multiply-add by a mask drawn with `rand_like`: PyTorch's CPU dropout
        draws with `bernoulli_` at half the speed and then makes two more passes, and the fused version takes
        20 dropouts from 8.4 to 5 ms each at 4,096 x 256 (bench_train). CUDA's dropout is already one kernel; under
        autocast (a low-precision update onto an fp32 stream) the mixed-dtype multiply-add is no faster."""
        p = self.dropout.p
        if not self.training or p == 0 or x.device.type != "cpu" or update.dtype != x.dtype:
            return x + self.dropout(update)
        keep = torch.rand_like(update).ge_(p).mul_(1 / (1 - p))  # 1/(1-p) with probability 1-p, else 0
        return torch.addcmul(x, update, keep)


class EncoderLayer(nn.Module):
    """3.1 Encoder layer: self-attention, then a position-wise feed-forward network."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(config, cross=False)
        self.feed_forward = PositionwiseFeedForward(config)
        self.sublayers = nn.ModuleList([SublayerConnection(config) for _ in range(2)])

    def forward(self, x: Tensor, attn_mask: Tensor | None, rotary: RotaryEmbedding | None) -> Tensor:
        x = self.sublayers[0](x, lambda h: self.self_attn(h, attn_mask, rotary=rotary))
        return self.sublayers[1](x, self.feed_forward)


class DecoderLayer(nn.Module):
    """3.1 Decoder layer: masked self-attention, attention over the encoder output, feed-forward."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(config, cross=False)
        self.cross_attn = MultiHeadAttention(config, cross=True)
        self.feed_forward = PositionwiseFeedForward(config)
        self.sublayers = nn.ModuleList([SublayerConnection(config) for _ in range(3)])

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None,
        is_causal: bool,
        cross_mask: Tensor | None,
        rotary: RotaryEmbedding | None,
        cache: LayerCache | None,
    ) -> Tensor:
        x = self.sublayers[0](x, lambda h: self.self_attn(h, self_mask, is_causal, rotary=rotary, cache=cache))
        x = self.sublayers[1](x, lambda h: self.cross_attn(h, cross_mask, memory=memory, cache=cache))
        return self.sublayers[2](x, self.feed_forward)


class Encoder(nn.Module):
    """3.1 A stack of N encoder layers (a final norm when norms are pre-placement)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.n_encoder_layers)])
        self.final_norm = make_norm(config) if config.norm_placement == "pre" else nn.Identity()

    def forward(self, x: Tensor, padding_mask: Tensor | None, rotary: RotaryEmbedding | None) -> Tensor:
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]  # (b, 1, 1, s)
        for layer in self.layers:
            x = layer(x, attn_mask, rotary)
        return self.final_norm(x)


class Decoder(nn.Module):
    """3.1 A stack of N decoder layers; self-attention is masked so position i sees only positions <= i."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(config.n_decoder_layers)])
        self.final_norm = make_norm(config) if config.norm_placement == "pre" else nn.Identity()

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        src_padding_mask: Tensor | None,
        tgt_padding_mask: Tensor | None,
        rotary: RotaryEmbedding | None,
        cache: DecoderCache | None,
    ) -> Tensor:
        t = x.shape[1]
        self_mask, is_causal = None, False
        if cache is not None:
            self_mask = cache.self_mask(t, x.device)
            is_causal = self_mask is None and t > 1
        elif tgt_padding_mask is not None:
            self_mask = subsequent_mask(t, t, 0, x.device)[None, None] & ~tgt_padding_mask[:, None, None, :]
        else:
            is_causal = t > 1  # lets SDPA use its causal kernels with no mask tensor
        cross_mask = None if src_padding_mask is None else ~src_padding_mask[:, None, None, :]
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, self_mask, is_causal, cross_mask, rotary,
                      cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.length += t  # in place when it is a static cache's position tensor
        return self.final_norm(x)


def subsequent_mask(n_queries: int, n_keys: int, offset: int | Tensor, device: torch.device) -> Tensor:
    """Bool (n_queries, n_keys), True where query i (at position offset + i) may attend to key j."""
    query_pos = offset + torch.arange(n_queries, device=device)[:, None]
    key_pos = torch.arange(n_keys, device=device)[None, :]
    return key_pos <= query_pos


# ---------------------------------------------------------------------------------------------------------
# Incremental decoding


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

    def __init__(self, model: Transformer, encoder_out: Tensor, capacity: int):
        config = model.config
        if config.positions == "learned" and capacity > config.max_seq_len:
            raise ValueError(f"a static cache of {capacity} positions exceeds max_seq_len={config.max_seq_len} "
                             f"of the learned positional embedding")
        for positions in (model.rotary, model.tgt_pos):
            if hasattr(positions, "extend"):  # sinusoids and rotations are computed as far as they are needed
                positions.extend(capacity)
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


# ---------------------------------------------------------------------------------------------------------
# The model


class CopyAttention(nn.Module):
    """A pointer-generator output (See, Liu & Manning, 2017, https://arxiv.org/abs/1704.04368), not in the
    paper: next to the vocabulary softmax, one attention head over the encoder output whose weights are a
    distribution over source positions, and so over the tokens found there; a gate mixes the two,

        p(w) = g * softmax(logits)(w) + (1 - g) * sum of attention[i] over source positions i holding w,

    with g = sigmoid(linear([decoder state; attended encoder output])). Copying a name out of the prompt then
    takes one attention pattern instead of having to bring the name's identity through cross-attention into the
    decoder state and out of the tied vocabulary projection, which a small model fails to learn (README,
    Fine-tuning). Returns log p, which serves wherever logits do: log_softmax leaves it unchanged.

    Subword copying: a name is several tokens (PROSPERO is PR O S PER O), and having copied one the head has to
    point at the source position after it. The attention scores get a learned bonus, `follow`, at each position
    whose previous token is the token just written (the decoder's input at this step): a fixed pattern, like an
    induction head's, which needs no state carried between steps, so decoding with a cache is unchanged. Without
    it a fine-tuned model copied the right characters' names from the middle or dropped pieces (THARINA for
    KATHARINA)."""

    GATE_BIAS = 0.0  # start undecided between generating and copying
    FOLLOW_INIT = 3.0  # a position after the token just written starts e^3 = 20 times as likely

    def __init__(self, config: ModelConfig):
        super().__init__()
        d_model = config.d_model
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.gate = nn.Linear(2 * d_model, 1)
        self.follow = nn.Parameter(torch.tensor(0.0))  # set by Transformer.reset_parameters

    def weights(self, hidden: Tensor, encoder_out: Tensor, src_ids: Tensor, tgt_ids: Tensor,
                src_padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The copy attention (b, t, s) over source positions, in fp32, and the gate's logit (b, t, 1): g is its
        sigmoid. tgt_ids (b, t) are the decoder's inputs at these steps, the tokens written before them."""
        scores = self.query(hidden) @ self.key(encoder_out).transpose(1, 2) * hidden.shape[-1] ** -0.5
        follows = F.pad(src_ids[:, None, :-1] == tgt_ids[:, :, None], (1, 0))  # (b, t, s): src[j - 1] == written
        scores = scores + self.follow * follows
        if src_padding_mask is not None:
            scores = scores.masked_fill(src_padding_mask[:, None, :], float("-inf"))
        attention = scores.float().softmax(-1)
        context = attention.to(encoder_out.dtype) @ encoder_out
        return attention, self.gate(torch.cat([hidden, context.to(hidden.dtype)], -1)).float()

    def forward(self, hidden: Tensor, logits: Tensor, encoder_out: Tensor, src_ids: Tensor, tgt_ids: Tensor,
                src_padding_mask: Tensor | None) -> Tensor:
        """hidden (b, t, D), logits (b, t, V), encoder_out (b, s, D), src_ids (b, s), tgt_ids (b, t) -> log p
        (b, t, V), fp32."""
        attention, gate = self.weights(hidden, encoder_out, src_ids, tgt_ids, src_padding_mask)
        b, t, s = attention.shape
        copy = attention.new_zeros(b, t, logits.shape[-1]).scatter_add_(-1, src_ids[:, None, :].expand(b, t, s),
                                                                          attention)
        return self.mix(F.log_softmax(logits.float(), -1), copy, gate)

    @staticmethod
    def losses(logits: Tensor, attention: Tensor, gate: Tensor, src_ids: Tensor, keep: Tensor, targets: Tensor,
               label_smoothing: float) -> Tensor:
        """The per-row cross-entropy of the mixture at the rows `keep` (b, t) selects, smoothed towards the uniform
        distribution, from the vocabulary logits (n, V) of those rows, the attention (b, t, s) and gate logit
        (b, t, 1) of `weights`. The mixture over the whole vocabulary is never built, nor log p_vocab: outside
        the row's source tokens the mixture is log p_vocab + log g, whose mean over the vocabulary is that of the
        logits less their logsumexp, so the smoothing term adds up the difference at the source's distinct tokens
        only (each of a token's positions counts 1/its count; absent tokens get no 1e-12 floor here, unlike in
        `mix`). Building the (n, V) mixture made a fine-tune step with smoothing 1.35 times as long."""
        rows = keep.nonzero()[:, 0]
        src = src_ids[rows]  # (n, s)
        gate = gate[keep]  # (n, 1)
        log_z = logits.logsumexp(-1, keepdim=True)  # (n, 1)
        copy = (attention[keep] * (src == targets[:, None])).sum(-1)
        losses = -CopyAttention.mix(logits.gather(-1, targets[:, None])[:, 0] - log_z[:, 0], copy, gate[:, 0])
        if not label_smoothing:
            return losses
        same = (src_ids[:, :, None] == src_ids[:, None, :]).to(attention.dtype)  # (b, s, s)
        at_source = (attention @ same)[keep]  # (n, s): each source position's token's whole copy probability
        vocab_at_source = logits.gather(-1, src) - log_z
        mixed = CopyAttention.mix(vocab_at_source, at_source, gate)
        differences = (mixed - vocab_at_source - F.logsigmoid(gate)) / same.sum(-1)[rows]
        mean_log_p = (logits.mean(-1) - log_z[:, 0] + F.logsigmoid(gate[:, 0])
                      + differences.sum(-1) / logits.shape[-1])
        return (1 - label_smoothing) * losses - label_smoothing * mean_log_p

    @staticmethod
    def mix(log_vocab: Tensor, copy: Tensor, gate: Tensor) -> Tensor:
        """log(g * p_vocab + (1 - g) * p_copy) from log p_vocab, p_copy and g's logit. Tokens absent from the
        source get a copy probability of 1e-12 instead of 0 (a log of 0 has no gradient)."""
        return torch.logaddexp(log_vocab + F.logsigmoid(gate), copy.clamp_min(1e-12).log() + F.logsigmoid(-gate))


class Transformer(nn.Module):
    """Encoder-decoder Transformer: `encode` the source once, `decode` the target (optionally step by step
    with a `DecoderCache`), `forward` does both and returns logits (b, t, V)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.src_embed = TokenEmbedding(config)
        self.src_ngrams = NGramEmbedding(config) if config.source_ngrams else None
        # 3.4: "we share the same weight matrix between the two embedding layers and the pre-softmax linear
        # transformation" (Press & Wolf, 2017, https://arxiv.org/abs/1608.05859).
        self.tgt_embed = self.src_embed if config.tie_embeddings else TokenEmbedding(config)
        self.output_proj = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size,
                                                                        bias=False)
        if config.positions == "sinusoidal":
            self.src_pos = self.tgt_pos = SinusoidalPositionalEncoding(config)
        elif config.positions == "learned":
            self.src_pos, self.tgt_pos = LearnedPositionalEmbedding(config), LearnedPositionalEmbedding(config)
        else:
            self.src_pos = self.tgt_pos = None
        self.rotary = RotaryEmbedding(config) if config.positions == "rotary" else None
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.copy = CopyAttention(config) if config.copy_attention else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation: Xavier-uniform linear weights and zero biases (as the paper's tensor2tensor and
        fairseq); token embeddings N(0, 1/D), so that after the sqrt(D) scale of 3.4 they have unit variance
        and tied output logits start near unit scale; learned positions N(0, 0.02); n-gram tables at zero;
        norms at identity. In pre-norm stacks each residual branch's output projection is scaled down by
        1/sqrt(2 * layers) (GPT-2) so the residual stream does not grow with depth."""
        config = self.config
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, TokenEmbedding):
                nn.init.normal_(module.weight, std=config.d_model ** -0.5)
            elif isinstance(module, LearnedPositionalEmbedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, NGramEmbedding):
                nn.init.zeros_(module.weight)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if config.norm_placement == "pre":
            for stack in (self.encoder, self.decoder):
                scale = (2 * len(stack.layers)) ** -0.5
                for layer in stack.layers:
                    for residual_out in (layer.self_attn.out_proj, layer.feed_forward.w2):
                        residual_out.weight.data.mul_(scale)
        if self.copy is not None:
            nn.init.constant_(self.copy.gate.bias, CopyAttention.GATE_BIAS)
            nn.init.constant_(self.copy.follow, CopyAttention.FOLLOW_INIT)

    # -- inputs --------------------------------------------------------------------------------------------

    def check_ids(self, ids: Tensor, name: str) -> None:
        """Fail with a clear error, before any kernel, on ids outside the vocabulary or positions past the
        learned table (on CUDA those would be a device-side assert; on CPU an index error or a silent wrap).
        Compiled code skips it: reading the ids back would split the graph (compiled training and decoding feed
        ids from the data pipeline and from the model's own argmax)."""
        if torch.compiler.is_compiling():
            return
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, length), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"{name} holds token ids outside [0, {self.config.vocab_size}): "
                             f"min {int(ids.min())}, max {int(ids.max())}")

    def embed(self, ids: Tensor, embedding: TokenEmbedding, positions: nn.Module | None, offset: int,
              ngrams: NGramEmbedding | None = None) -> Tensor:
        x = embedding(ids)
        if ngrams is not None:
            x = x + ngrams(ids)
        if positions is not None:
            x = x + positions(ids.shape[1], offset)
        return self.dropout(x)  # 5.4: dropout on the sums of embeddings and positional encodings

    # -- encoder / decoder -----------------------------------------------------------------------------------

    def encode(self, src_ids: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
        """src_ids (b, s) -> encoder output (b, s, D)."""
        self.check_ids(src_ids, "src_ids")
        x = self.embed(src_ids, self.src_embed, self.src_pos, 0, self.src_ngrams)
        return self.encoder(x, src_padding_mask, self.rotary)

    def decode(
        self,
        tgt_ids: Tensor,
        encoder_out: Tensor,
        src_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
        return_hidden: bool = False,
        src_ids: Tensor | None = None,
    ) -> Tensor:
        """tgt_ids (b, t) -> logits (b, t, V), or the final hidden states (b, t, D) with return_hidden.
        With a cache, tgt_ids are the next positions after those already decoded into it. A model with
        `copy_attention` needs the source ids too, and returns log-probabilities (which serve as logits)."""
        self.check_ids(tgt_ids, "tgt_ids")
        if cache is not None and tgt_padding_mask is not None:
            raise ValueError("tgt_padding_mask is not supported with a cache: decode step by step without padding")
        offset = cache.length if cache is not None else 0
        x = self.embed(tgt_ids, self.tgt_embed, self.tgt_pos, offset)
        hidden = self.decoder(x, encoder_out, src_padding_mask, tgt_padding_mask, self.rotary, cache)
        if return_hidden:
            return hidden
        if self.copy is None:
            return self.project(hidden)
        if src_ids is None:
            raise ValueError("this model copies from its source (copy_attention): decode needs src_ids")
        return self.copy(hidden, self.project(hidden), encoder_out, src_ids, tgt_ids, src_padding_mask)

    @property
    def output_weight(self) -> Tensor:
        """The (V, D) weight of the pre-softmax projection: the shared embedding unless untied."""
        return self.output_proj.weight if self.output_proj is not None else self.tgt_embed.weight

    def project(self, hidden: Tensor) -> Tensor:
        """3.4 The pre-softmax linear transformation: (..., D) -> logits (..., V)."""
        weight = self.output_weight
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return F.linear(hidden, weight)
        # Without gradients (decoding), multiply by a contiguous (D, V) copy: for a few rows MKL is ~3x faster on
        # that layout than on the (V, D) one. The copy is redone when the weight changes or moves.
        key = (weight.data_ptr(), weight._version)
        if getattr(self, "_projection_key", None) != key:
            self._projection_t = weight.detach().t().contiguous()
            self._projection_key = key
        return hidden @ self._projection_t

    def new_cache(self) -> DecoderCache:
        return DecoderCache(self.config.n_decoder_layers)

    def new_static_cache(self, encoder_out: Tensor, capacity: int) -> StaticDecoderCache:
        return StaticDecoderCache(self, encoder_out, capacity)

    def forward(
        self,
        src_ids: Tensor,
        tgt_ids: Tensor,
        src_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits (b, t, V) for target ids given source ids."""
        encoder_out = self.encode(src_ids, src_padding_mask)
        return self.decode(tgt_ids, encoder_out, src_padding_mask, tgt_padding_mask, src_ids=src_ids)

    def loss(
        self,
        src_ids: Tensor,
        tgt_in: Tensor,
        tgt_out: Tensor,
        src_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
        label_smoothing: float = 0.0,
        reduction: Literal["mean", "sum"] = "mean",
        weights: Tensor | None = None,
    ) -> Tensor:
        """Cross-entropy of tgt_out given (src_ids, tgt_in), over positions where tgt_out is not pad; with
        `weights` (shaped like tgt_out) each position's loss is weighted, and "mean" divides by their sum.
        Only those positions go through the output projection, which is most of the compute at small D, and
        the projection and the loss run fused in chunks of rows (`linear_cross_entropy`), never holding all the
        logits (5.4: the paper trains with label smoothing 0.1). With a copy head the loss is that of its
        mixture (`CopyAttention`)."""
        encoder_out = self.encode(src_ids, src_padding_mask)
        keep = tgt_out != self.config.pad_id
        weights = None if weights is None else weights[keep]
        hidden = self.decode(tgt_in, encoder_out, src_padding_mask, tgt_padding_mask, return_hidden=True)
        if self.copy is not None:  # no (rows, vocabulary) copy distribution: see CopyAttention.losses
            attention, gate = self.copy.weights(hidden, encoder_out, src_ids, tgt_in, src_padding_mask)
            # Unfused: at fine-tuning's few target rows a chunked, recomputing version was slower (143 against
            # 135 ms a step).
            logits = self.project(hidden[keep]).float()
            losses = CopyAttention.losses(logits, attention, gate, src_ids, keep, tgt_out[keep], label_smoothing)
            return reduce_losses(losses, reduction, weights)
        return linear_cross_entropy(hidden[keep], self.output_weight, tgt_out[keep], label_smoothing, reduction,
                                    weights=weights)

    # -- checkpoints -------------------------------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory, tokenizer=None) -> None:
        from seq2seq.checkpoint import save_pretrained

        save_pretrained(self, directory, tokenizer)

    @classmethod
    def from_pretrained(cls, directory, device: str | torch.device = "cpu") -> Transformer:
        from seq2seq.checkpoint import load_model

        return load_model(directory, device)


def reduce_losses(losses: Tensor, reduction: str, weights: Tensor | None) -> Tensor:
    """The sum of per-row losses (n,), each times its weight, or their mean over the weights' sum."""
    total = losses.sum() if weights is None else losses @ weights.to(losses.dtype)
    if reduction == "sum":
        return total
    return total / (len(losses) if weights is None else weights.sum())


def with_copy_attention(model: Transformer) -> Transformer:
    """The model with a new `CopyAttention` head and every other weight kept: for fine-tuning a pretrained model
    that has none. At first the head's gate mixes the pretrained model's distribution half and half with a copy
    distribution over the source."""
    if model.copy is not None:
        return model
    return _with_new_module(model, "copy.", copy_attention=True)


def with_source_ngrams(model: Transformer, orders: tuple[int, ...], buckets: int, dropout: float) -> Transformer:
    """The model with new, zero `NGramEmbedding` tables of these orders on its encoder input and every other
    weight kept, so that it computes what it did until the tables learn: for fine-tuning a pretrained model that
    has none. A model that already has n-gram tables is returned as it is."""
    if model.src_ngrams is not None:
        return model
    return _with_new_module(model, "src_ngrams.", source_ngrams=tuple(orders), ngram_buckets=buckets,
                            ngram_dropout=dropout)


def _with_new_module(model: Transformer, prefix: str, **changes: Any) -> Transformer:
    """A model built from `model.config` with `changes`, holding every weight of `model`; only the weights under
    `prefix` (the module the changes add) are new."""
    parameter = next(model.parameters())
    grown = Transformer(replace(model.config, **changes)).to(parameter.device, parameter.dtype)
    result = grown.load_state_dict(model.state_dict(), strict=False)
    assert not result.unexpected_keys and all(k.startswith(prefix) for k in result.missing_keys), result
    return grown.train(model.training)


def count_parameters(config: ModelConfig) -> int:
    """The closed-form parameter count of `Transformer(config)`."""
    D, F_, V = config.d_model, config.d_ff, config.vocab_size
    norm = 2 * D if config.norm == "layernorm" else D
    attention = 4 * D * D + 4 * D  # Q, K, V and output projections, with biases
    if config.activation == "swiglu":
        ffn = D * 2 * F_ + 2 * F_ + F_ * D + D
    else:
        ffn = D * F_ + F_ + F_ * D + D
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    total = config.n_encoder_layers * encoder_layer + config.n_decoder_layers * decoder_layer
    total += V * D if config.tie_embeddings else 3 * V * D
    if config.positions == "learned":
        total += 2 * config.max_seq_len * D
    if config.norm_placement == "pre":
        total += 2 * norm
    if config.copy_attention:
        total += 2 * D * D + 2 * D + 2  # query, key, gate and follow
    total += sum(ngram_table_rows(config, order) for order in config.source_ngrams) * D
    return total
