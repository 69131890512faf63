"""Extension at the input embedding: hashed n-gram embeddings of the source (not in the paper).

For each order n in `config.source_ngrams`, the n tokens ending at each source position are hashed into one of
`ngram_buckets` rows of a table of their own, and the rows found are added to the token embeddings (the
over-tokenized input of Huang et al., 2025, https://arxiv.org/abs/2501.16975; fastText's hashed bigrams,
Joulin et al., 2016). A small model's vocabulary, learnt from Shakespeare, splits a modern word into pieces that
mean nothing alone; a bigram's row gives the encoder "area man" or "trump's" whole, as the n-gram features of a
linear classifier do. Order 1 is not hashed: its table has a row per token, a second input embedding that, unlike
the first, is not tied to the output projection.

The tables start at zero, so adding them to a trained model leaves its outputs as they were. In training each
position's n-gram vector is dropped with probability `ngram_dropout` (and the rest scaled up), so the model keeps
reading the tokens too rather than memorising n-grams. Positions before the start read as padding; a position's
vector depends on no later token, so right padding changes nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.model.config import ModelConfig


def ngram_table_rows(config: ModelConfig, order: int) -> int:
    """Rows of the n-gram table of this order: one per token for unigrams, `ngram_buckets` for longer n-grams."""
    return config.vocab_size if order == 1 else config.ngram_buckets


class NGramEmbedding(nn.Module):
    """(b, s) source ids -> (b, s, D) summed n-gram rows, added to the source token embeddings."""

    MODULUS = 2_147_483_647  # 2^31 - 1: products stay inside int64
    MULTIPLIER = 1_000_003
    no_weight_decay = True  # an embedding table (seq2seq.trainer.parameter_groups)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.orders, self.pad_id = config.source_ngrams, config.pad_id
        self.sizes = [ngram_table_rows(config, order) for order in self.orders]
        self.offsets = [sum(self.sizes[:k]) for k in range(len(self.orders))]
        self.dropout = config.ngram_dropout
        self.weight = nn.Parameter(torch.zeros(sum(self.sizes), config.d_model))
        self.scale = math.sqrt(config.d_model)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

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
