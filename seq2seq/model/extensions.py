"""The two points where an extension plugs into `Transformer`, and the config keys that fill them:

- `source_extension`, at the input embedding: a module of the source ids whose output is added to the source
  token embeddings (`ngrams.NGramEmbedding`, `source_ngrams`);
- `output_head`, at the output distribution: a module that turns the decoder states into next-token
  log-probabilities in place of the softmax over the pre-softmax projection (`copy_head.CopyAttention`,
  `copy_attention`). It has `forward(hidden, logits, encoder_out, src_ids, tgt_ids, src_padding_mask)` and
  `losses(...)` for training.

Each extension has `reset_parameters()`, run after the model's own initialisation.
"""

from __future__ import annotations

from torch import nn

from seq2seq.model.config import ModelConfig
from seq2seq.model.copy_head import CopyAttention
from seq2seq.model.ngrams import NGramEmbedding

EXTENSION_PREFIXES = ("source_extension.", "output_head.")


def build_extensions(config: ModelConfig) -> tuple[nn.Module | None, nn.Module | None]:
    """(source_extension, output_head) for this config; None where the config asks for none."""
    source_extension = NGramEmbedding(config) if config.source_ngrams else None
    output_head = CopyAttention(config) if config.copy_attention else None
    return source_extension, output_head
