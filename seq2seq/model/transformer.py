"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017), in the paper's order:
`Transformer` (the model), then 3.1 the encoder and decoder stacks, 3.2 attention, 3.3 the position-wise
feed-forward network, 3.4 embeddings and softmax, 3.5 positional encoding. Options beyond the paper (pre-norm,
RMSNorm, learned or rotary positions, GELU or SwiGLU) are switches in `ModelConfig`; the defaults are the paper's.
Two opt-in extensions plug in at named points (the input embedding, the output distribution): see extensions.py.

The decoding contract, for greedy decoding, sampling, beam search, compiled decoding, classification and scoring
alike: `log_probs(...)` gives log-probabilities (b, t, V) of the next token at every target position, and
`next_token_log_probs(...)` those of the position after the last (b, V), for any model, extensions or not.

Tensor dimensions in shape comments: b batch, s source length, t target length, n any length, h heads,
d head dim, D d_model, F d_ff, V vocabulary. Padding masks are bool (b, n), True at padding positions (PyTorch's
`key_padding_mask` convention); `None` means the batch has no padding.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.cross_entropy import linear_cross_entropy
from seq2seq.model.cache import DecoderCache, LayerCache, StaticDecoderCache, subsequent_mask
from seq2seq.model.config import ModelConfig
from seq2seq.model.cpu_fast_paths import DecodingProjection, attention_kernel, dropout_add
from seq2seq.model.extensions import build_extensions


class Transformer(nn.Module):
    """Encoder-decoder Transformer: `encode` the source once, `decode` the target into decoder states (step by
    step with a `DecoderCache`), `log_probs` turns them into next-token log-probabilities; `forward` does all
    three; `loss` is the training objective."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.src_embed = TokenEmbedding(config)
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
        # The extension points (extensions.py): added to the source embeddings; replaces the output softmax.
        self.source_extension, self.output_head = build_extensions(config)
        self._decoding_projection = DecodingProjection()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation: Xavier-uniform linear weights and zero biases (as the paper's tensor2tensor and
        fairseq); token embeddings N(0, 1/D), so that after the sqrt(D) scale of 3.4 they have unit variance
        and tied output logits start near unit scale; learned positions N(0, 0.02); norms at identity. In
        pre-norm stacks each residual branch's output projection is scaled down by 1/sqrt(2 * layers) (GPT-2) so
        the residual stream does not grow with depth. Extensions then initialise themselves."""
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
        for extension in (self.source_extension, self.output_head):
            if extension is not None:
                extension.reset_parameters()

    # -- the encoder ----------------------------------------------------------------------------------------

    def encode(self, src_ids: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
        """src_ids (b, s) -> encoder output (b, s, D)."""
        self.check_ids(src_ids, "src_ids")
        x = self.src_embed(src_ids)
        if self.source_extension is not None:
            x = x + self.source_extension(src_ids)
        return self.encoder(self.add_positions(x, self.src_pos, 0), src_padding_mask, self.rotary)

    # -- the decoder and the decoding contract ----------------------------------------------------------------

    def decode(
        self,
        tgt_ids: Tensor,
        encoder_out: Tensor,
        src_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
        cache: DecoderCache | StaticDecoderCache | None = None,
    ) -> Tensor:
        """tgt_ids (b, t) -> the decoder's final states (b, t, D). With a cache, tgt_ids are the next positions
        after those already decoded into it."""
        self.check_ids(tgt_ids, "tgt_ids")
        if cache is not None and tgt_padding_mask is not None:
            raise ValueError("tgt_padding_mask is not supported with a cache: decode step by step without padding")
        offset = cache.length if cache is not None else 0
        x = self.add_positions(self.tgt_embed(tgt_ids), self.tgt_pos, offset)
        return self.decoder(x, encoder_out, src_padding_mask, tgt_padding_mask, self.rotary, cache)

    def log_probs(
        self,
        tgt_ids: Tensor,
        encoder_out: Tensor,
        src_ids: Tensor,
        src_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
        cache: DecoderCache | StaticDecoderCache | None = None,
    ) -> Tensor:
        """Log-probabilities (b, t, V), fp32, of the token after each of tgt_ids (b, t) given the source."""
        hidden = self.decode(tgt_ids, encoder_out, src_padding_mask, tgt_padding_mask, cache)
        return self.output_distribution(hidden, encoder_out, src_ids, tgt_ids, src_padding_mask)

    def output_distribution(self, hidden: Tensor, encoder_out: Tensor, src_ids: Tensor, tgt_ids: Tensor,
                            src_padding_mask: Tensor | None) -> Tensor:
        """Decoder states (b, t, D), and the decoder inputs tgt_ids (b, t) they came from, -> log-probabilities
        (b, t, V): the softmax of the pre-softmax projection (3.4), or the output head's distribution."""
        logits = self.project(hidden)
        if self.output_head is not None:
            return self.output_head(hidden, logits, encoder_out, src_ids, tgt_ids, src_padding_mask)
        return F.log_softmax(logits.float(), -1)

    def next_token_log_probs(
        self,
        tgt_ids: Tensor,
        encoder_out: Tensor,
        src_ids: Tensor,
        src_padding_mask: Tensor | None = None,
        cache: DecoderCache | StaticDecoderCache | None = None,
    ) -> Tensor:
        """Log-probabilities (b, V) of the token after tgt_ids (b, t). With a cache, tgt_ids are only the positions
        not yet decoded into it (one, step by step)."""
        hidden = self.decode(tgt_ids, encoder_out, src_padding_mask, cache=cache)[:, -1:]  # only the last is needed
        return self.output_distribution(hidden, encoder_out, src_ids, tgt_ids[:, -1:], src_padding_mask)[:, 0]

    def forward(
        self,
        src_ids: Tensor,
        tgt_ids: Tensor,
        src_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced log-probabilities (b, t, V) of the next token at each target position."""
        encoder_out = self.encode(src_ids, src_padding_mask)
        return self.log_probs(tgt_ids, encoder_out, src_ids, src_padding_mask, tgt_padding_mask)

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
        logits (5.4: the paper trains with label smoothing 0.1)."""
        encoder_out = self.encode(src_ids, src_padding_mask)
        keep = tgt_out != self.config.pad_id
        weights = None if weights is None else weights[keep]
        hidden = self.decode(tgt_in, encoder_out, src_padding_mask, tgt_padding_mask)
        if self.output_head is not None:
            losses = self.output_head.losses(hidden, self.project, keep, tgt_out[keep], encoder_out, src_ids, tgt_in,
                                             src_padding_mask, label_smoothing)
            return reduce_losses(losses, reduction, weights)
        return linear_cross_entropy(hidden[keep], self.output_weight, tgt_out[keep], label_smoothing, reduction,
                                    weights=weights)

    # -- 3.4 the pre-softmax projection -------------------------------------------------------------------------

    @property
    def output_weight(self) -> Tensor:
        """The (V, D) weight of the pre-softmax projection: the shared embedding unless untied."""
        return self.output_proj.weight if self.output_proj is not None else self.tgt_embed.weight

    def project(self, hidden: Tensor) -> Tensor:
        """3.4 The pre-softmax linear transformation: (..., D) -> logits (..., V)."""
        return self._decoding_projection(hidden, self.output_weight)

    # -- 3.5 positions, and checks --------------------------------------------------------------------------

    def add_positions(self, x: Tensor, positions: nn.Module | None, offset: int | Tensor) -> Tensor:
        if positions is not None:
            x = x + positions(x.shape[1], offset)
        return self.dropout(x)  # 5.4: dropout on the sums of embeddings and positional encodings

    def extend_positions(self, length: int) -> None:
        """Make computed position tables (sinusoids, rotations) reach `length` before a static-shape decoding."""
        for positions in (self.rotary, self.tgt_pos):
            if hasattr(positions, "extend"):
                positions.extend(length)

    def check_ids(self, ids: Tensor, name: str) -> None:
        """Fail with a clear error, before any kernel, on ids outside the vocabulary (on CUDA those would be a
        device-side assert; on CPU an index error or a silent wrap). Compiled code skips it: reading the ids back
        would split the graph."""
        if torch.compiler.is_compiling():
            return
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, length), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"{name} holds token ids outside [0, {self.config.vocab_size}): "
                             f"min {int(ids.min())}, max {int(ids.max())}")

    def new_cache(self) -> DecoderCache:
        return DecoderCache(self.config.n_decoder_layers)

    def new_static_cache(self, encoder_out: Tensor, capacity: int) -> StaticDecoderCache:
        return StaticDecoderCache(self, encoder_out, capacity)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def reduce_losses(losses: Tensor, reduction: str, weights: Tensor | None) -> Tensor:
    """The sum of per-row losses (n,), each times its weight, or their mean over the weights' sum."""
    total = losses.sum() if weights is None else losses @ weights.to(losses.dtype)
    if reduction == "sum":
        return total
    return total / (len(losses) if weights is None else weights.sum())


# ---------------------------------------------------------------------------------------------------------
# 3.1 Encoder and decoder stacks


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
        cache: DecoderCache | StaticDecoderCache | None,
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
            return dropout_add(x, sublayer(self.norm(x)), self.dropout)
        return self.norm(dropout_add(x, sublayer(x), self.dropout))


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


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
        with attention_kernel(q):
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
# 3.4 Embeddings and softmax (the pre-softmax projection is `Transformer.project`)


class TokenEmbedding(nn.Module):
    """3.4 Learned token embeddings, multiplied by sqrt(d_model)."""

    no_weight_decay = True  # seq2seq.trainer.parameter_groups

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.vocab_size, config.d_model))
        self.scale = math.sqrt(config.d_model)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight) * self.scale


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

    no_weight_decay = True  # seq2seq.trainer.parameter_groups

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


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al., 2021): rotates query/key pairs by position inside self-attention instead of adding a
    vector to the embeddings. Cross-attention gets no rotation: source and target positions are not on one axis."""

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
            cos = rows_from(self.cos, offset, length).to(x.dtype)[:, None]  # (b', 1, n, d)
            sin = rows_from(self.sin, offset, length).to(x.dtype)[:, None]
        else:
            self.extend(offset + length)
            cos = self.cos[offset:offset + length].to(x.dtype)
            sin = self.sin[offset:offset + length].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def rows_from(table: Tensor, offset: Tensor, length: int) -> Tensor:
    """table[offset:offset + length] for positions held in a tensor, (b', n, D): a 1-element offset for a compiled
    decoding step (one graph serves every step), or one offset per row (b,) for the serving engine's batch, whose
    rows are at different positions."""
    index = offset[:, None] + torch.arange(length, device=table.device)  # (b', n)
    return table.index_select(0, index.flatten()).view(*index.shape, table.shape[-1])
