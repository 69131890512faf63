"""Training FLOPs per token of the encoder-decoder, from its config: the count model FLOPs utilisation uses.

The rule of Kaplan et al. (2020) and PaLM (Chowdhery et al., 2022, appendix B): a weight matrix that a token
passes through costs 2 FLOPs per weight forward and 4 backward, so 6 x the weights each token meets; attention
adds 6 x (2 matmuls of 2 x keys x d_model FLOPs) = 12 x keys x d_model per query token and layer, counted over
every key (causal masking not halved, as PaLM and nanoGPT count it). An encoder-decoder differs from a GPT in
which tokens meet which weights: a source token passes the encoder and, as a key and value of cross-attention,
each decoder layer's K and V projections; a target token passes the decoder's self-attention, the cross-attention's
Q and output projections, the feed-forward and the output projection. Biases, norms, softmax and embedding
lookups are O(d_model) per token and left out. A token is a source or a target token (tokens/s counts both).
"""

from __future__ import annotations

from seq2seq.model import ModelConfig


def training_flops_per_token(config: ModelConfig, src_len: int, tgt_len: int) -> dict:
    """FLOPs per (source or target) token of one training step, with each term and the derivation as text."""
    D, F, V = config.d_model, config.d_ff, config.vocab_size
    ffn_matrices = 3 if config.activation == "swiglu" else 2
    attention_projections = 4 * D * D  # Q, K, V, output
    ffn = ffn_matrices * D * F
    per_source = config.n_encoder_layers * (attention_projections + ffn) + config.n_decoder_layers * 2 * D * D
    per_target = config.n_decoder_layers * (attention_projections + 2 * D * D + ffn) + D * V
    tokens = src_len + tgt_len
    weights = 6 * (src_len * per_source + tgt_len * per_target) / tokens
    keys = (config.n_encoder_layers * src_len * src_len + config.n_decoder_layers * tgt_len * tgt_len
            + config.n_decoder_layers * tgt_len * src_len)
    attention = 12 * D * keys / tokens
    total = weights + attention
    return {
        "flops_per_token": total,
        "weights_term": weights,
        "attention_term": attention,
        "weights_per_source_token": per_source,
        "weights_per_target_token": per_target,
        "derivation": [
            f"d_model D={D}, d_ff F={F}, vocab V={V}, {config.n_encoder_layers}+{config.n_decoder_layers} layers, "
            f"{config.activation} ({ffn_matrices} FFN matrices), source S={src_len} + target T={tgt_len} tokens",
            f"weights a source token meets: L_enc x (4D^2 + {ffn_matrices}DF) + L_dec x 2D^2 (cross-attention K, V)"
            f" = {per_source:,}",
            f"weights a target token meets: L_dec x (4D^2 + 2D^2 + {ffn_matrices}DF) + DV (output projection)"
            f" = {per_target:,}",
            f"weights term: 6 x (S x {per_source:,} + T x {per_target:,}) / (S + T) = {weights:,.0f}",
            f"attention term: 12 x D x (L_enc S^2 + L_dec T^2 + L_dec T S) / (S + T) = 12 x {D} x {keys:,} / "
            f"{tokens} = {attention:,.0f}",
            f"total: {total / 1e6:.2f} MFLOP per token",
        ],
    }
