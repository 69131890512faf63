"""The two systems the speed benchmarks compare, built at the same dimensions: ours and transformers' BART.

Both random-weight, GELU, post-norm, 512 positions (ours sinusoidal, BART learned), dropout 0.1; BART's attention
and activation dropouts off, as ours has none. `DIMS` names the sizes: `bench` (the benchmarks' default),
`base` (the paper's base model, Table 3, at the benchmarks' vocabulary) and `quick` (smoke tests).
"""

from __future__ import annotations

from seq2seq.model import ModelConfig, Transformer

DIMS = {
    "bench": dict(vocab_size=8192, d_model=256, n_heads=4, n_encoder_layers=4, n_decoder_layers=4, d_ff=1024),
    "base": dict(vocab_size=8192, d_model=512, n_heads=8, n_encoder_layers=6, n_decoder_layers=6, d_ff=2048),
    "quick": dict(vocab_size=1024, d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=256),
}
PAD, BOS, EOS = 0, 2, 3


def our_config(dims: str) -> ModelConfig:
    return ModelConfig(**DIMS[dims], dropout=0.1, max_seq_len=512, positions="sinusoidal", norm_placement="post",
                       activation="gelu")


def ours(dims: str) -> Transformer:
    return Transformer(our_config(dims))


def bart(dims: str):
    from transformers import BartConfig, BartForConditionalGeneration

    d = DIMS[dims]
    config = BartConfig(vocab_size=d["vocab_size"], d_model=d["d_model"], encoder_layers=d["n_encoder_layers"],
                        decoder_layers=d["n_decoder_layers"], encoder_attention_heads=d["n_heads"],
                        decoder_attention_heads=d["n_heads"], encoder_ffn_dim=d["d_ff"], decoder_ffn_dim=d["d_ff"],
                        max_position_embeddings=512, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
                        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=BOS,
                        forced_bos_token_id=None, forced_eos_token_id=None)
    return BartForConditionalGeneration(config)
