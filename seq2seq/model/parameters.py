"""The parameter count of a config, in closed form (checked against `Transformer(config).num_parameters()`)."""

from __future__ import annotations

from seq2seq.model.config import ModelConfig
from seq2seq.model.ngrams import ngram_table_rows


def count_parameters(config: ModelConfig) -> int:
    D, F, V = config.d_model, config.d_ff, config.vocab_size
    norm = 2 * D if config.norm == "layernorm" else D
    attention = 4 * D * D + 4 * D  # Q, K, V and output projections, with biases
    if config.activation == "swiglu":
        ffn = D * 2 * F + 2 * F + F * D + D
    else:
        ffn = D * F + F + F * D + D
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
