"""Preference tuning: the DPO and KTO objectives, and the feedback file people write while they use a model.

DPO (Rafailov et al., 2023, https://arxiv.org/abs/2305.18290) trains on pairs: with the policy's and the frozen
reference's summed log-probabilities of the chosen and rejected answers, the implicit rewards are
r = beta * (log pi - log pi_ref) and the loss is -log sigmoid(r_chosen - r_rejected).

KTO (Ethayarajh et al., 2024, https://arxiv.org/abs/2402.01306) trains on thumbs up / down: with the same reward
r = log pi - log pi_ref and a reference point z0, an estimate of KL(pi || pi_ref) taken from mismatched
prompt/response pairs (each prompt with another example's response), clamped at 0 and not differentiated, the
loss is w_d * (1 - sigmoid(beta * (r - z0))) for a desirable answer and w_u * (1 - sigmoid(beta * (z0 - r))) for
an undesirable one; the weights let unbalanced feedback work (the paper keeps w_d * n_d / (w_u * n_u) in
[1, 4/3]).

The feedback file (JSONL, one record a line, appended with a flush and an fsync):

    {"prompt": ..., "response": ..., "label": true|false, "checkpoint_sha256": ..., "time": ...}   (thumbs)
    {"prompt": ..., "chosen": ..., "rejected": ..., "checkpoint_sha256": ..., "time": ...}        (pairs)

`prompt` is the conversation as the encoder reads it (text), or a list of {role, content} messages; an optional
`tone` names the tone the answer was asked in.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seq2seq.records import InvalidRecords, read_jsonl
from seq2seq.tasks import TONES

# ---------------------------------------------------------------------------------------------------------
# The objectives


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor,
             beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair DPO losses (n,) and the chosen and rejected rewards (n,) each, from summed log-probabilities."""
    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward.detach(), rejected_reward.detach()


def kto_loss(policy: Tensor, reference: Tensor, desirable: Tensor, kl: Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-example KTO losses (n,) and rewards beta * (log pi - log pi_ref) (n,). `desirable` (n,) bool; `kl` the
    reference point, a scalar already clamped at 0 and detached (`kto_reference_point`)."""
    reward = policy - reference
    loss = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (reward - kl))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (kl - reward))))
    return loss, beta * reward.detach()


def kto_reference_point(policy_mismatched: Tensor, reference_mismatched: Tensor) -> Tensor:
    """z0: the mean of log pi - log pi_ref over mismatched pairs, clamped at 0, no gradient."""
    return (policy_mismatched - reference_mismatched).mean().clamp(min=0).detach()


def sequence_log_probs(model, src_ids: Tensor, tgt_in: Tensor, tgt_out: Tensor, src_padding_mask: Tensor | None,
                       pad_id: int) -> Tensor:
    """Summed log-probability (b,) of each row's target tokens (tgt_out, padding excluded) given its source."""
    tgt_padding_mask = tgt_in == pad_id
    tgt_padding_mask[:, 0] = False  # <s>
    log_probs = model(src_ids, tgt_in, src_padding_mask, tgt_padding_mask if tgt_padding_mask.any() else None)
    token = log_probs.gather(-1, tgt_out[..., None]).squeeze(-1)
    return token.masked_fill(tgt_out == pad_id, 0.0).sum(-1)


# ---------------------------------------------------------------------------------------------------------
# The feedback file


@dataclass(frozen=True)
class Feedback:
    """One record: a thumb (`response`, `label`) or a pair (`chosen`, `rejected`)."""

    prompt: str | list[dict[str, str]]
    line: int
    response: str | None = None
    label: bool | None = None
    chosen: str | None = None
    rejected: str | None = None
    tone: str | None = None
    checkpoint_sha256: str | None = None

    @property
    def is_pair(self) -> bool:
        return self.chosen is not None


def feedback_record(prompt: str | list[dict[str, str]], checkpoint_sha256: str, *, response: str | None = None,
                    label: bool | None = None, chosen: str | None = None, rejected: str | None = None,
                    tone: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"prompt": prompt}
    if chosen is not None:
        record.update(chosen=chosen, rejected=rejected)
    else:
        record.update(response=response, label=label)
    if tone is not None:
        record["tone"] = tone
    record.update(checkpoint_sha256=checkpoint_sha256, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    problem = check_record(record)
    if problem is not None:
        raise ValueError(f"feedback: {problem}")
    return record


def append_feedback(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one record as a line, flushed and fsync'd, so that a crash loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def check_record(record: Any) -> str | None:
    """What is wrong with a record, or None."""
    if not isinstance(record, dict):
        return "expected a JSON object"
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m["content"].strip()
                                 and m.get("role") in ("system", "user", "assistant") for m in prompt):
            return "prompt: messages must be {role, content} objects with text"
    elif not isinstance(prompt, str) or not prompt.strip():
        return "prompt: expected non-empty text or a list of messages"
    if record.get("tone") is not None and record["tone"] not in TONES:
        return f"tone: expected one of {', '.join(TONES)}, got {record['tone']!r}"
    if "chosen" in record or "rejected" in record:
        for name in ("chosen", "rejected"):
            if not isinstance(record.get(name), str) or not record[name].strip():
                return f"{name}: expected non-empty text"
        if record["chosen"].strip() == record["rejected"].strip():
            return "chosen equals rejected: a pair needs two different answers"
        return None
    if not isinstance(record.get("response"), str) or not record["response"].strip():
        return "response: expected non-empty text (or chosen and rejected for a pair)"
    if not isinstance(record.get("label"), bool):
        return f"label: expected true or false, got {record.get('label')!r}"
    return None


def read_feedback(path: str | Path, invalid: InvalidRecords | None = None) -> list[Feedback]:
    """The records of a feedback file. A malformed or torn line (a crash mid-write) is an error naming the file and
    line, or, with `InvalidRecords(skip=True)`, skipped and counted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feedback file not found")
    invalid = invalid or InvalidRecords(skip=False)
    records = []
    for line, record in read_jsonl(path, invalid):
        problem = check_record(record)
        if problem is not None:
            invalid.reject(path, line, problem)
            continue
        records.append(Feedback(prompt=record["prompt"], line=line, response=record.get("response"),
                                label=record.get("label"), chosen=record.get("chosen"),
                                rejected=record.get("rejected"), tone=record.get("tone"),
                                checkpoint_sha256=record.get("checkpoint_sha256")))
    return records
