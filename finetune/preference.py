"""Preference tuning recipe, the step after fine-tuning:
`seq2seq finetune --config configs/finetune/<dpo|kto>.yaml --from FINETUNED_DIR [data.feedback=FILE] [key=value ...]`.

What it does, and the keys that control it:
- `method: dpo` trains on pairs (prompt, chosen, rejected); `method: kto` on thumbs (prompt, response, label);
  `preference.beta` scales the implicit reward; KTO's `preference.desirable_weight` / `undesirable_weight` balance
  unbalanced feedback (seq2seq/preference.py has the formulas).
- `data.feedback`: the feedback file `seq2seq chat --feedback` and `seq2seq serve --feedback` write, or the
  built-in set `seq2seq data prefs --from FINETUNED_DIR` makes (the default path). Records recorded against another
  checkpoint (its sha256 differs) are a warning with counts, or an error with `data.strict: true`; a malformed line
  is an error naming file and line unless `data.skip_invalid: true`.
- The reference is the starting checkpoint, frozen: its log-probabilities of every answer are computed once before
  the first step and kept in `output_dir/reference.pt` (so a resumed run reads them instead of recomputing them
  with a model that has moved), and training holds one model in memory.
- Through the shared loop (seq2seq/trainer.py): resume, Ctrl-C, TensorBoard, metrics.jsonl, Accelerate. Logged
  each step: loss, the chosen and rejected (DPO) or desirable and undesirable (KTO) log-probabilities and rewards,
  the reward margin and accuracy, and the KL estimate to the reference (KTO's reference point; for DPO the mean
  log-ratio of the rejected answers, which in the built-in set are the model's own replies).
- A tenth of the records (at least one) is held out for the validation loss and reward accuracy.

Raises:
    ValueError: `--from` is pretrained only (no inference.json); an empty set; a feedback file of the other kind
        (pairs for KTO are split into thumbs, thumbs cannot make DPO pairs).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seq2seq.checkpoint import WEIGHTS_FILE, load_pretrained
from seq2seq.files import sha256_file
from seq2seq.model import adapt
from seq2seq.padding import pad
from seq2seq.preference import (
    Feedback,
    dpo_loss,
    kto_loss,
    kto_reference_point,
    read_feedback,
    sequence_log_probs,
)
from seq2seq.prompting import INFERENCE_FILE, InferenceSpec, build_conversation_source, build_source
from seq2seq.records import InvalidRecords
from seq2seq.runtime import eval_mode
from seq2seq.trainer import Trainer, make_accelerator

DEFAULT_FEEDBACK = {"dpo": "data/prefs/pairs.jsonl", "kto": "data/prefs/thumbs.jsonl"}


@dataclass
class Example:
    """One record as ids: a source and one (KTO) or two (DPO: chosen, rejected) targets [bos] ... [eos]."""

    src: list[int]
    targets: list[list[int]]
    desirable: bool = True  # KTO


@dataclass
class PreferenceBatch:
    """One micro-batch: sources, targets (DPO: chosen rows then rejected rows; KTO: the answers, then each source
    with another example's answer), and the reference's summed log-probabilities of each target row."""

    src_ids: torch.Tensor
    src_padding_mask: torch.Tensor | None
    tgt: torch.Tensor  # (k * b, t)
    reference: torch.Tensor  # (k * b,)
    desirable: torch.Tensor  # (b,) bool (KTO)

    def to(self, device: torch.device) -> PreferenceBatch:
        return PreferenceBatch(*(None if t is None else t.to(device) for t in
                                 (self.src_ids, self.src_padding_mask, self.tgt, self.reference, self.desirable)))

    def loss_weight(self, pad_id: int) -> torch.Tensor:
        return torch.tensor(float(len(self.src_ids)), device=self.src_ids.device)  # the loss: a mean over records

    def num_tokens(self) -> int:
        return int(self.src_ids.numel() + self.tgt.numel())


class PreferenceObjective(torch.nn.Module):
    """The model with the DPO or KTO loss as its `forward` (what the shared loop wraps for DDP). The step's
    metrics (means over its micro-batches) are read with `pop_metrics`."""

    def __init__(self, model, method: str, beta: float, desirable_weight: float, undesirable_weight: float,
                 pad_id: int):
        super().__init__()
        self.model = model
        self.method, self.beta, self.pad_id = method, beta, pad_id
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight
        self.sums: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()

    def policy_log_probs(self, batch: PreferenceBatch) -> torch.Tensor:
        copies = len(batch.tgt) // len(batch.src_ids)
        src = batch.src_ids.repeat(copies, 1)
        mask = None if batch.src_padding_mask is None else batch.src_padding_mask.repeat(copies, 1)
        return sequence_log_probs(self.model, src, batch.tgt[:, :-1], batch.tgt[:, 1:], mask, self.pad_id)

    def forward(self, batch: PreferenceBatch, label_smoothing: float = 0.0) -> torch.Tensor:
        b = len(batch.src_ids)
        policy = self.policy_log_probs(batch)
        if self.method == "dpo":
            loss, chosen, rejected = dpo_loss(policy[:b], policy[b:], batch.reference[:b], batch.reference[b:],
                                              self.beta)
            self.note(b, loss=loss, chosen_logps=policy[:b], rejected_logps=policy[b:], chosen_reward=chosen,
                      rejected_reward=rejected, reward_margin=chosen - rejected,
                      reward_accuracy=(chosen > rejected).float(),
                      kl=(policy[b:] - batch.reference[b:]))
            return loss.sum()
        kl = kto_reference_point(policy[b:], batch.reference[b:])
        loss, reward = kto_loss(policy[:b], batch.reference[:b], batch.desirable, kl, self.beta,
                                self.desirable_weight, self.undesirable_weight)
        good, bad = batch.desirable, ~batch.desirable
        self.note(b, loss=loss, kl=kl.expand(b))
        for name, rows in (("desirable", good), ("undesirable", bad)):
            if rows.any():
                self.note(int(rows.sum()), **{f"{name}_logps": policy[:b][rows], f"{name}_reward": reward[rows]})
        if good.any() and bad.any():
            self.note(1, reward_margin=reward[good].mean() - reward[bad].mean())
        self.note(b, reward_accuracy=((reward > 0) == batch.desirable).float())
        return loss.sum()

    def note(self, n: int, **values: torch.Tensor) -> None:
        for name, value in values.items():
            self.sums[name] += float(value.detach().float().sum())
            self.counts[name] += n

    def pop_metrics(self) -> dict[str, float]:
        metrics = {name: self.sums[name] / max(self.counts[name], 1) for name in self.sums}
        self.sums.clear()
        self.counts.clear()
        return metrics


class PreferenceTask:
    """Batches of records, a pure function of (seed, step), and the held-out loss."""

    def __init__(self, config, tokenizer, train: list[Example], val: list[Example], reference: dict[str, list],
                 objective: PreferenceObjective):
        self.config, self.tokenizer, self.objective = config, tokenizer, objective
        self.train_examples, self.val_examples = train, val
        self.reference = reference

    def make_objective(self, model) -> PreferenceObjective:
        return self.objective

    def collate(self, examples: list[Example], reference: list[list[float]]) -> PreferenceBatch:
        pad_id = self.tokenizer.pad_id
        src, src_mask = pad([e.src for e in examples], pad_id)
        copies = len(examples[0].targets)
        rows = [e.targets[k] for k in range(copies) for e in examples]
        tgt, _ = pad(rows, pad_id)
        ref = torch.tensor([reference[i][k] for k in range(copies) for i in range(len(examples))])
        return PreferenceBatch(src, src_mask, tgt, ref, torch.tensor([e.desirable for e in examples]))

    def global_batch(self, step: int) -> list[int]:
        n, size = len(self.train_examples), min(self.config.train.batch_size, len(self.train_examples))
        per_epoch = max(1, n // size)
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng([self.config.train.seed, epoch]).permutation(n)
        return order[index * size:(index + 1) * size].tolist()

    def batches(self, step: int, rank: int, world_size: int, accum_steps: int) -> list[PreferenceBatch]:
        ids = self.global_batch(step)
        parts = np.array_split(np.array(ids), world_size * accum_steps)
        out = []
        for m in range(accum_steps):
            part = parts[m * world_size + rank].tolist()
            out.append(self.collate([self.train_examples[i] for i in part], [self.reference["train"][i] for i in part]))
        return out

    def evaluate(self, model, accelerator, full: bool) -> dict[str, float]:
        objective = PreferenceObjective(model, self.objective.method, self.objective.beta,
                                        self.objective.desirable_weight, self.objective.undesirable_weight,
                                        self.tokenizer.pad_id)
        mine = list(range(accelerator.process_index, len(self.val_examples), accelerator.num_processes))
        totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        accuracy = torch.zeros(1, dtype=torch.float64, device=accelerator.device)
        for start in range(0, len(mine), 32):
            part = mine[start:start + 32]
            batch = self.collate([self.val_examples[i] for i in part],
                                 [self.reference["val"][i] for i in part]).to(accelerator.device)
            totals[0] += objective(batch).double()
            totals[1] += len(part)
            accuracy += objective.pop_metrics().get("reward_accuracy", 0.0) * len(part)
        loss, n = accelerator.reduce(totals, reduction="sum").tolist()
        accuracy = accelerator.reduce(accuracy, reduction="sum").item()
        return {"val_loss": loss / max(n, 1), "val_reward_accuracy": accuracy / max(n, 1)}

    def sample(self, model) -> str | None:
        return None


# ---------------------------------------------------------------------------------------------------------
# Records to examples


def load_examples(config, tokenizer, spec: InferenceSpec, checkpoint_sha: str) -> list[Example]:
    path = Path(config.data.feedback or DEFAULT_FEEDBACK[config.method])
    if not path.is_file():
        hint = " (make the built-in set with `seq2seq data prefs --from FINETUNED_DIR`)" if not config.data.feedback \
            else ""
        raise FileNotFoundError(f"data.feedback: {path} not found{hint}")
    invalid = InvalidRecords(skip=config.data.skip_invalid)
    records = read_feedback(path, invalid)
    if invalid.total:
        print(f"skipped {invalid.total} invalid line(s) of {path}: "
              + "; ".join(f"{r['reason']} ({r['count']})" for r in invalid.as_rows()), file=sys.stderr)
    others = Counter(r.checkpoint_sha256 for r in records if r.checkpoint_sha256 not in (None, checkpoint_sha))
    if others:
        message = (f"{path}: {sum(others.values())} of {len(records)} records were recorded against another "
                   f"checkpoint ({len(others)} other sha256)")
        if config.data.strict:
            raise ValueError(message + " (data.strict: true)")
        print(f"warning: {message}", file=sys.stderr)
    examples = []
    for record in records:
        src = source_of(record, tokenizer, spec, config.data.max_src_len)
        if config.method == "dpo":
            if not record.is_pair:
                raise ValueError(f"{path}:{record.line}: method dpo needs pairs (chosen, rejected); this is a thumb")
            examples.append(Example(src, [target(tokenizer, record.chosen, config.data.max_tgt_len),
                                          target(tokenizer, record.rejected, config.data.max_tgt_len)]))
        elif record.is_pair:  # KTO reads a pair as a thumb up and a thumb down
            examples.append(Example(src, [target(tokenizer, record.chosen, config.data.max_tgt_len)], True))
            examples.append(Example(src, [target(tokenizer, record.rejected, config.data.max_tgt_len)], False))
        else:
            examples.append(Example(src, [target(tokenizer, record.response, config.data.max_tgt_len)],
                                    record.label))
    if len(examples) < 2:
        raise ValueError(f"{path}: {len(examples)} usable record(s); preference tuning needs at least 2")
    return examples


def source_of(record: Feedback, tokenizer, spec: InferenceSpec, max_len: int) -> list[int]:
    tone = (record.tone or "plain") if spec.tones else None
    if isinstance(record.prompt, list):
        return build_conversation_source(tokenizer, record.prompt, task=spec.task, tone=tone, max_len=max_len).ids
    return build_source(tokenizer, record.prompt, task=spec.task, tone=tone, max_len=max_len).ids


def target(tokenizer, text: str, max_len: int) -> list[int]:
    return [tokenizer.bos_id, *tokenizer.encode(text)[:max_len - 2], tokenizer.eos_id]


@torch.no_grad()
def reference_log_probs(model, tokenizer, examples: list[Example], batch_size: int = 32) -> list[list[float]]:
    """The frozen reference's summed log-probabilities of each example's targets."""
    out = []
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            part = examples[start:start + batch_size]
            copies = len(part[0].targets)
            src, mask = pad([e.src for e in part], tokenizer.pad_id)
            tgt, _ = pad([e.targets[k] for k in range(copies) for e in part], tokenizer.pad_id)
            src, tgt = src.repeat(copies, 1).to(device), tgt.to(device)
            mask = None if mask is None else mask.repeat(copies, 1).to(device)
            logps = sequence_log_probs(model, src, tgt[:, :-1], tgt[:, 1:], mask, tokenizer.pad_id).view(copies, -1)
            out += logps.t().tolist()
    return out


def with_mismatched_targets(examples: list[Example], mismatch: np.ndarray, offset: int,
                            all_examples: list[Example]) -> list[Example]:
    """KTO: each example gets a second target, its mismatch partner's answer (another example's; the pairing is
    fixed, so the reference's log-probabilities of it are computed once)."""
    out = []
    for k, example in enumerate(examples):
        partner = mismatch[offset + k]
        if partner == offset + k:
            partner = (partner + 1) % len(all_examples)
        out.append(Example(example.src, [example.targets[0], all_examples[partner].targets[0]], example.desirable))
    return out


# ---------------------------------------------------------------------------------------------------------


def run_preference(config) -> Any:
    if not config.pretrained:
        raise ValueError("no starting checkpoint: pass --from DIR (a fine-tuned checkpoint)")
    if not (Path(config.pretrained) / INFERENCE_FILE).is_file():
        raise ValueError(f"--from {config.pretrained}: pretrained only (no {INFERENCE_FILE}); preference tuning "
                         f"starts from a fine-tuned checkpoint (`seq2seq finetune`)")
    model, tokenizer = load_pretrained(config.pretrained)
    model = adapt(model, config.model)
    spec = InferenceSpec.load(config.pretrained)
    checkpoint_sha = sha256_file(Path(config.pretrained) / WEIGHTS_FILE)
    examples = load_examples(config, tokenizer, spec, checkpoint_sha)
    order = np.random.default_rng(config.train.seed).permutation(len(examples))
    n_val = max(1, len(examples) // 10)
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in sorted(order[n_val:])]
    if config.method == "kto":
        everything = train + val
        mismatch = np.random.default_rng([config.train.seed, 1]).permutation(len(everything))
        train = with_mismatched_targets(train, mismatch, 0, everything)
        val = with_mismatched_targets(val, mismatch, len(train), everything)
    output_dir = Path(config.output_dir)
    reference = cached_reference(output_dir, model, tokenizer, train, val, checkpoint_sha, config)
    accelerator = make_accelerator(config.train, output_dir)
    pc = config.preference
    objective = PreferenceObjective(model.train(), config.method, pc.beta, pc.desirable_weight, pc.undesirable_weight,
                                    tokenizer.pad_id)
    task = PreferenceTask(config, tokenizer, train, val, reference, objective)
    inference = json.loads((Path(config.pretrained) / INFERENCE_FILE).read_text(encoding="utf-8"))

    def export_extra(directory: Path) -> None:
        from seq2seq.files import write_json_atomic

        write_json_atomic(directory / INFERENCE_FILE, inference)

    from seq2seq.config import to_dict

    run_config = to_dict(config)
    run_config["model"] = model.config.to_dict()
    trainer = Trainer(config.train, model, task, config.output_dir, tokenizer=tokenizer, run_config=run_config,
                      export_extra=export_extra, accelerator=accelerator)
    if trainer.is_main:
        kind = "pairs" if config.method == "dpo" else "thumbs"
        print(f"{config.method} from {config.pretrained}: {len(train):,} train / {len(val):,} val {kind}, "
              f"beta {pc.beta}", file=sys.stderr)
    return trainer.fit(config.resume, overwrite=config.overwrite, allow_changes=config.resume_allow_changes)


def cached_reference(output_dir: Path, model, tokenizer, train: list[Example], val: list[Example],
                     checkpoint_sha: str, config) -> dict[str, list]:
    """The reference log-probabilities, computed once and kept in output_dir/reference.pt; a file made for other
    data or another starting checkpoint is recomputed."""
    key = hashlib.sha256(json.dumps([checkpoint_sha, [(e.src, e.targets, e.desirable) for e in train + val]])
                         .encode()).hexdigest()
    path = output_dir / "reference.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached.get("key") == key:
            return {"train": cached["train"], "val": cached["val"]}
    print(f"computing the reference's log-probabilities of {len(train) + len(val):,} records", file=sys.stderr)
    reference = {"train": reference_log_probs(model, tokenizer, train),
                 "val": reference_log_probs(model, tokenizer, val)}
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, **reference}, tmp)
    tmp.replace(path)
    return reference
