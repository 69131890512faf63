"""`ModelConfig`: every architecture setting of `Transformer`, validated here and nowhere else. The defaults are
the paper's base model; the extensions (`copy_attention`, `source_ngrams`) are off unless asked for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from seq2seq.config import from_dict, to_dict

# What fine-tuning may change in a pretrained model's config (its `model:` section): these keys leave the pretrained
# weights' shapes as they are, or add an extension whose weights start so that the model computes what it did.
ADAPTABLE_KEYS = ("dropout", "copy_attention", "source_ngrams", "ngram_buckets", "ngram_dropout")


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
    copy_attention: bool = False  # extension: a pointer-generator output that copies source tokens (copy_head.py)
    source_ngrams: tuple[int, ...] = ()  # extension: orders of hashed n-gram embeddings of the source (ngrams.py)
    ngram_buckets: int = 32768  # rows of each hashed table (orders above 1)
    ngram_dropout: float = 0.5  # in training, each source position's n-gram vector is dropped with this probability

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff",
                     "max_seq_len", "ngram_buckets"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"model.positions 'rotary' needs an even head dimension, got d_model/n_heads = "
                             f"{self.head_dim}")
        for name in ("dropout", "ngram_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {value!r}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"model.pad_id must be in [0, vocab_size), got {self.pad_id!r}")
        if not isinstance(self.copy_attention, bool):
            raise ValueError(f"model.copy_attention must be true or false, got {self.copy_attention!r}")
        orders = tuple(self.source_ngrams)
        if (any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in orders)
                or len(set(orders)) != len(orders)):
            raise ValueError(f"model.source_ngrams must be distinct n-gram orders (positive integers), "
                             f"got {list(orders)!r}")
        self.source_ngrams = orders
        if not (self.norm_eps > 0 and self.rotary_base > 0):
            raise ValueError("model.norm_eps and model.rotary_base must be positive")
        choices = {"norm_placement": ("post", "pre"), "norm": ("layernorm", "rmsnorm"),
                   "positions": ("sinusoidal", "learned", "rotary"), "activation": ("relu", "gelu", "swiglu")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data, "model")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def adapted(self, changes: dict[str, Any]) -> ModelConfig:
        """This config with a fine-tuning config's `model:` section applied: only `ADAPTABLE_KEYS` may change
        (the others shape the pretrained weights), and the result is validated like any config."""
        fixed = sorted(key for key, value in changes.items()
                       if key not in ADAPTABLE_KEYS and getattr(self, key, object()) != value)
        if fixed:
            known = {field for field in self.to_dict()}
            key = fixed[0]
            if key not in known:
                raise ValueError(f"unknown config key 'model.{key}' (fine-tuning may set: {', '.join(ADAPTABLE_KEYS)})")
            raise ValueError(f"model.{key} cannot change when fine-tuning: it shapes the pretrained weights "
                             f"(fine-tuning may set: {', '.join(ADAPTABLE_KEYS)})")
        return ModelConfig.from_dict({**self.to_dict(), **changes})
