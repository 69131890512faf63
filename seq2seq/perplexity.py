"""Perplexity on any text, measured exactly as pretraining measures its val split: the text's tokens are cut into
consecutive spans of `tgt_len` tokens, and each span is predicted once by the decoder while the encoder reads the
`src_len` tokens before it (behind the pretraining task marker). Every token is predicted exactly once, with up to
`src_len` tokens of context.

Reported per token (nats) and per character (nats and bits), characters counted as the tokenizer's pieces spell
them (`Tokenizer.char_lengths`), so the figure compares with character-level models whatever the tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from seq2seq.padding import pad
from seq2seq.runtime import eval_mode, unwrap
from seq2seq.tasks import PRETRAINING_TASK


@dataclass
class Spans:
    """Consecutive spans that tile `tokens`: span i predicts tokens [i * tgt_len, (i + 1) * tgt_len) while the
    encoder reads the src_len tokens before it."""

    tokens: np.ndarray
    src_len: int
    tgt_len: int

    def __post_init__(self) -> None:
        if self.src_len < 0 or self.tgt_len < 1:
            raise ValueError(f"src_len must be >= 0 and tgt_len >= 1, got {self.src_len} and {self.tgt_len}")

    def __len__(self) -> int:
        return -(-len(self.tokens) // self.tgt_len)

    def batch(self, indices: list[int], tokenizer, prefix: list[int]):
        """(src_ids, src_padding_mask, tgt_in, tgt_in_padding_mask, tgt_out) of these spans, right-padded."""
        sources, targets = [], []
        for i in indices:
            start = i * self.tgt_len
            context = self.tokens[max(0, start - self.src_len):start]
            sources.append([*prefix, *context.tolist(), tokenizer.eos_id])
            targets.append(self.tokens[start:start + self.tgt_len].tolist())
        src, src_mask = pad(sources, tokenizer.pad_id)
        tgt, tgt_mask = pad([[tokenizer.bos_id, *t] for t in targets], tokenizer.pad_id)
        return src, src_mask, tgt[:, :-1], None if tgt_mask is None else tgt_mask[:, :-1], tgt[:, 1:]


def prefix_ids(tokenizer) -> list[int]:
    """The pretraining task marker, when the tokenizer has it."""
    return [tokenizer.task_id(PRETRAINING_TASK)] if PRETRAINING_TASK in tokenizer.tasks else []


@torch.no_grad()
def span_totals(model, tokenizer, spans: Spans, indices: list[int], batch_size: int,
                device: torch.device) -> torch.Tensor:
    """(summed NLL, tokens, characters) over these spans, float64 on `device` (a process's share, to be summed
    over processes)."""
    char_lengths = torch.from_numpy(tokenizer.char_lengths().astype(np.int64))
    prefix = prefix_ids(tokenizer)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for start in range(0, len(indices), batch_size):
        src, src_mask, tgt_in, tgt_mask, tgt_out = spans.batch(indices[start:start + batch_size], tokenizer, prefix)
        log_probs = model(src.to(device), tgt_in.to(device), None if src_mask is None else src_mask.to(device),
                          None if tgt_mask is None else tgt_mask.to(device))
        tgt_out = tgt_out.to(device)
        keep = tgt_out != tokenizer.pad_id
        nll = -log_probs.float().gather(-1, tgt_out[..., None]).squeeze(-1)
        totals[0] += (nll * keep).sum().double()
        totals[1] += keep.sum()
        totals[2] += char_lengths[tgt_out[keep].cpu()].sum()
    return totals


def summarize(nll: float, tokens: float, chars: float) -> dict[str, float]:
    return {"nats_per_token": nll / max(tokens, 1), "nats_per_char": nll / max(chars, 1),
            "bits_per_char": nll / max(chars, 1) / math.log(2), "tokens": tokens, "chars": chars}


def text_perplexity(model, tokenizer, text: str, src_len: int, tgt_len: int, batch_size: int = 32) -> dict[str, float]:
    """The measurement over one text (see the module docstring)."""
    if not text:
        raise ValueError("the text is empty")
    model = unwrap(model)
    device = next(model.parameters()).device
    spans = Spans(np.asarray(tokenizer.encode(text)), src_len, tgt_len)
    with eval_mode(model):
        totals = span_totals(model, tokenizer, spans, list(range(len(spans))), batch_size, device)
    return summarize(*totals.tolist())
