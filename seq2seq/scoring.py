"""The one scorer: the summed log-probability of each continuation given its source, which `classify`, the
few-shot harness and fine-tuning's test evaluation all use.

The end-of-sequence choice: a continuation is scored as the decoder's whole answer, log p(continuation </s> |
source), end term included. The decoder of an encoder-decoder writes the answer and stops, so "yes" and "yes,
but" are different answers; lm-evaluation-harness leaves the end term out because a causal model's continuation
is followed by more text, which is not the case here.

Sources repeated across pairs (a text scored against each label word, a context against each choice) are
encoded once per batch; each pair then costs one teacher-forced decoder pass, batched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from seq2seq.padding import right_pad
from seq2seq.runtime import eval_mode, unwrap


@torch.inference_mode()
def continuation_log_probs(
    model,
    tokenizer,
    sources: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 64,
    progress: tqdm | None = None,
) -> list[float]:
    """log p(continuation </s> | source) for each (source ids, continuation ids) pair, in order. The decoder
    reads <s> + continuation; `batch_size` counts pairs."""
    if len(sources) != len(continuations):
        raise ValueError(f"{len(sources)} sources but {len(continuations)} continuations")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = unwrap(model)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_id
    scores: list[float] = []
    with eval_mode(model):
        for start in range(0, len(sources), batch_size):
            pairs = range(start, min(start + batch_size, len(sources)))
            unique: dict[tuple[int, ...], int] = {}
            rows = [unique.setdefault(tuple(sources[i]), len(unique)) for i in pairs]
            src_ids, src_padding_mask = right_pad(list(unique), pad_id, device)
            encoder_out = model.encode(src_ids, src_padding_mask)
            index = torch.tensor(rows, device=device)
            targets, _ = right_pad([[tokenizer.bos_id, *continuations[i], tokenizer.eos_id] for i in pairs], pad_id,
                                   device)
            tgt_in, tgt_out = targets[:, :-1], targets[:, 1:]  # no target mask: padding comes after the end
            log_probs = model.log_probs(tgt_in, encoder_out[index], src_ids[index],
                                        None if src_padding_mask is None else src_padding_mask[index])
            token_log_probs = log_probs.gather(-1, tgt_out[..., None]).squeeze(-1)
            scores += token_log_probs.masked_fill(tgt_out == pad_id, 0.0).sum(-1).tolist()
            if progress is not None:
                progress.update(len(pairs))
    return scores
