"""Fine-tuning recipe: `seq2seq finetune --config configs/finetune/NAME.yaml --from PRETRAINED_DIR [key=value ...]`
(also `python -m finetune`).

What it does, and the keys that control it:
- Loads the pretrained checkpoint (`--from`, or `pretrained:`), model and tokenizer, and the mixture built by
  `seq2seq data build` (`data.mixture`). The `model:` section changes the pretrained model's config
  (`seq2seq.model.ModelConfig`; only `dropout` and the extensions may change): `copy_attention: true` adds a
  pointer-generator head that can copy tokens of the prompt into the answer (a speaker's name out of the scene);
  `source_ngrams: [1, 2]` adds n-gram embeddings to its encoder input: the tokenizer's pieces and hashed pairs of
  them, which the classifiers read as a linear model reads its n-gram features.
- Each example's encoder input is `<task:TASK> <TONE> prompt </s>` (seq2seq.prompting.build_source; the tone
  token follows from the example's labels); the decoder learns `response </s>`; the loss covers only response
  tokens. With `data.shots: k`, a share `data.shots_probability` of the examples carry up to k demonstrations
  of the same task before the prompt (training "with exemplars" for few-shot prompting).
- Batches group examples of similar length under a token budget (`data.max_tokens`, at most
  `train.batch_size` examples); per-task weights `data.task_weights`; label smoothing `train.label_smoothing`.
- What the loss averages over (`data.loss_unit`): response tokens ("token"), or examples ("example": each
  example's tokens share a weight of 1, so a one-word classification answer counts as much as a long reply);
  per-task multipliers of the loss `data.task_loss_weights`. Val loss stays per token, unweighted.
- Through the shared loop (seq2seq/trainer.py): val loss every `train.eval_every` steps with early stopping
  (`train.early_stopping_patience`), checkpoints, resume, TensorBoard, metrics.jsonl, Accelerate. A resume with
  another config is an error unless `resume_allow_changes` lists the keys; a fresh run into a folder holding
  another run's checkpoints is an error unless `overwrite: true` (`--overwrite`) (docs/reliability.md).
- At the end: the model in `output_dir/final/` (with `inference.json`, which tells chat/classify/eval how to
  prompt it) and `output_dir/eval.json`: per source and task on the test split, exact match and token F1 for
  generated answers, accuracy and F1 for classification, beside majority-class and random-choice baselines.

Raises:
    CheckpointError: `--from` is not a checkpoint directory, or its tokenizer does not match its vocabulary.
    ValueError: the mixture has no training or no val examples; an unknown key or task weight; a `model:` key that
        would change the pretrained weights' shapes; output_dir in use, holding another run, or resumed with
        another config (seq2seq/trainer.py).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from finetune.batching import Encoded, LengthGroupedBatches
from seq2seq.checkpoint import load_pretrained
from seq2seq.config import apply_overrides, from_dict, load_yaml, to_dict
from seq2seq.files import write_json_atomic
from seq2seq.metrics import baseline_answers, binary_scores, exact_match, token_f1
from seq2seq.model import ModelConfig, Transformer, adapt
from seq2seq.prompting import INFERENCE_FILE, build_source
from seq2seq.tasks import CHAT_TASK, CLASSIFICATION_TASKS, LABEL_WORDS, classifier_specs, tone_of
from seq2seq.trainer import Batch, TrainConfig, Trainer, make_accelerator


@dataclass
class FinetuneDataConfig:
    mixture: str = "data/mixture/default"
    task_weights: dict[str, float] = field(default_factory=dict)  # per-task multipliers; unnamed tasks 1.0
    loss_unit: str = "token"  # "token": each response token counts once; "example": each example counts once
    task_loss_weights: dict[str, float] = field(default_factory=dict)  # per-task multipliers of the loss
    max_src_len: int = 256
    max_tgt_len: int = 128
    max_tokens: int = 6144  # padded source + target tokens per optimizer step
    shots: int = 0  # up to this many demonstrations before the prompt
    shots_probability: float = 0.5
    # Preference tuning (method dpo or kto): the feedback file (default: the built-in set of `seq2seq data prefs`),
    # whether feedback recorded against another checkpoint is an error, and whether bad lines are skipped.
    feedback: str | None = None
    strict: bool = False
    skip_invalid: bool = False


@dataclass
class PreferenceConfig:
    """DPO and KTO settings (finetune/preference.py)."""

    beta: float = 0.1
    desirable_weight: float = 1.0  # KTO: the loss weight of a thumb up...
    undesirable_weight: float = 1.0  # ...and of a thumb down

    def __post_init__(self) -> None:
        for name in ("beta", "desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if not (0 < value < 1e6):
                raise ValueError(f"preference.{name} must be a positive number, got {value!r}")


@dataclass
class FinetuneEvalConfig:
    quick_examples: int = 512  # val examples in the frequent evaluations; the final one uses all
    test_limit: int | None = 300  # test examples per (source, task) group in eval.json; None: all
    batch_size: int = 64
    max_new_tokens: int = 48


@dataclass
class FinetuneConfig:
    output_dir: str = "runs/finetune"
    resume: str | None = None
    overwrite: bool = False  # a fresh run may replace another run's checkpoints and model in output_dir
    resume_allow_changes: list[str] = field(default_factory=list)  # config keys (or sections) a resume may change
    method: Literal["sft", "dpo", "kto"] = "sft"  # sft: prompt -> response; dpo, kto: preference tuning
    pretrained: str | None = None  # the pretrained checkpoint directory (or --from)
    # Changes to the pretrained model's config (ModelConfig keys: dropout, copy_attention, source_ngrams,
    # ngram_buckets, ngram_dropout), checked and applied by seq2seq.model.adapt.
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ModelConfig().adapted(self.model)  # a bad key or value is named now, before anything loads
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)


def load_config(path: str | Path, overrides: list[str] = ()) -> FinetuneConfig:
    data = apply_overrides(load_yaml(path), list(overrides))
    try:
        return from_dict(FinetuneConfig, data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


# ---------------------------------------------------------------------------------------------------------
# Examples as token ids


class ExampleEncoder:
    """Turns mixture examples into encoder and decoder ids, with optional demonstrations."""

    def __init__(self, tokenizer, config: FinetuneDataConfig, seed: int):
        self.tokenizer = tokenizer
        self.config = config
        self.seed = seed

    def target(self, response: str) -> list[int]:
        ids = self.tokenizer.encode(response)[:self.config.max_tgt_len - 2]
        return [self.tokenizer.bos_id, *ids, self.tokenizer.eos_id]

    def encode(self, examples: list[dict[str, Any]], with_shots: bool) -> list[Encoded]:
        rng = np.random.default_rng(self.seed)
        by_task: dict[str, list[int]] = defaultdict(list)
        for i, example in enumerate(examples):
            by_task[example["task"]].append(i)
        encoded = []
        for i, example in enumerate(examples):
            shots: list[tuple[str, str]] = []
            if with_shots and self.config.shots and rng.random() < self.config.shots_probability:
                pool = by_task[example["task"]]
                k = int(rng.integers(1, self.config.shots + 1))
                picks = [j for j in rng.choice(pool, size=min(len(pool), k + 1), replace=False) if j != i][:k]
                shots = [(examples[j]["prompt"], examples[j]["response"]) for j in picks]
            source = build_source(self.tokenizer, example["prompt"], task=example["task"], tone=tone_of(example),
                                  shots=shots, max_len=self.config.max_src_len)
            encoded.append(Encoded(source.ids, self.target(example["response"]), example["task"]))
        return encoded


# ---------------------------------------------------------------------------------------------------------
# The task the shared loop trains


class FinetuningTask:
    def __init__(self, config: FinetuneConfig, tokenizer, train_examples: list[dict], val_examples: list[dict],
                 world_size: int):
        self.config = config
        self.tokenizer = tokenizer
        encoder = ExampleEncoder(tokenizer, config.data, config.train.seed)
        self.train = LengthGroupedBatches(
            encoder.encode(train_examples, with_shots=True), config.data.task_weights, config.train.batch_size,
            config.data.max_tokens, world_size * config.train.grad_accum_steps, config.train.seed, tokenizer.pad_id,
            config.data.loss_unit, config.data.task_loss_weights)
        self.val = encoder.encode(val_examples, with_shots=False)
        order = np.random.default_rng(config.train.seed).permutation(len(self.val))
        self.quick_val = [self.val[i] for i in order[:config.eval.quick_examples]]

    def batches(self, step: int, rank: int, world_size: int, accum_steps: int) -> list[Batch]:
        return self.train.batches(step, rank, world_size, accum_steps)

    def evaluate(self, model: Transformer, accelerator, full: bool) -> dict[str, float]:
        examples = self.val if full else self.quick_val
        mine = examples[accelerator.process_index::accelerator.num_processes]
        totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        size = self.config.eval.batch_size
        for start in range(0, len(mine), size):
            batch = self.train.collate(mine[start:start + size]).to(accelerator.device)
            totals[0] += model.loss(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.src_padding_mask,
                                    batch.tgt_padding_mask, reduction="sum").double()
            totals[1] += (batch.tgt_out != self.tokenizer.pad_id).sum()
        nll, tokens = accelerator.reduce(totals, reduction="sum").tolist()
        return {"val_loss": nll / max(tokens, 1)}

    def sample(self, model: Transformer) -> str | None:
        from seq2seq.generation import GenerationConfig, generate

        prompts = ["What is your name?", "Who says: 'O Romeo, Romeo! wherefore art thou Romeo?'"]
        tasks = [CHAT_TASK, "speaker"]
        sources = [build_source(self.tokenizer, p, task=t, tone="plain", max_len=self.config.data.max_src_len).ids
                   for p, t in zip(prompts, tasks)]
        results = generate(model, self.tokenizer, sources, GenerationConfig(max_new_tokens=32))
        return "\n\n".join(f"{p}\n→ {r.text}" for p, r in zip(prompts, results))


# ---------------------------------------------------------------------------------------------------------
# Test evaluation: eval.json


def inference_config(tokenizer) -> dict[str, Any]:
    """What chat, classify and eval need to prompt a fine-tuned model (written as final/inference.json)."""
    return {"task": CHAT_TASK, "tones": True, "classifiers": classifier_specs(tokenizer.tasks)}


@torch.no_grad()
def evaluate_test(model: Transformer, tokenizer, config: FinetuneConfig, train_examples: list[dict],
                  test_examples: list[dict]) -> dict[str, Any]:
    """Scores per (source, task) group of the test split, beside majority-class and random-choice baselines."""
    from seq2seq.classify import classify
    from seq2seq.generation import GenerationConfig, generate

    rng = np.random.default_rng(config.train.seed)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for example in test_examples:
        groups[(example["source"], example["task"])].append(example)
    train_responses: dict[str, list[str]] = defaultdict(list)
    for example in train_examples:
        train_responses[example["task"]].append(example["response"])
    inference = inference_config(tokenizer)
    rows = []
    for (source, task), examples in sorted(groups.items()):
        if config.eval.test_limit is not None and len(examples) > config.eval.test_limit:
            examples = [examples[i] for i in sorted(rng.choice(len(examples), config.eval.test_limit, replace=False))]
        references = [e["response"] for e in examples]
        baselines = baseline_answers(train_responses[task], len(examples), rng)
        row: dict[str, Any] = {"source": source, "task": task, "n": len(examples)}
        label = CLASSIFICATION_TASKS.get(task)
        if label is not None and label in inference["classifiers"]:
            # Test prompts are already phrased as questions: score them as they are.
            classifier = {**inference["classifiers"][label], "template": "{text}"}
            probabilities = classify(model, tokenizer, [e["prompt"] for e in examples], classifier,
                                     batch_size=config.eval.batch_size)
            truth = [r == LABEL_WORDS[True] for r in references]
            row["model"] = binary_scores([p["true"] >= 0.5 for p in probabilities], truth)
            for system, answers in baselines.items():
                row[system] = binary_scores([a == LABEL_WORDS[True] for a in answers], truth)
        else:
            sources = [build_source(tokenizer, e["prompt"], task=task, tone=tone_of(e),
                                    max_len=config.data.max_src_len).ids for e in examples]
            predictions = []
            for start in range(0, len(sources), config.eval.batch_size):
                results = generate(model, tokenizer, sources[start:start + config.eval.batch_size],
                                   GenerationConfig(max_new_tokens=config.eval.max_new_tokens))
                predictions += [r.text for r in results]
            row["model"] = text_scores(predictions, references)
            for system, answers in baselines.items():
                row[system] = text_scores(answers, references)
            row["examples"] = [{"prompt": e["prompt"], "reference": ref, "prediction": pred}
                               for e, ref, pred in list(zip(examples, references, predictions))[:3]]
        rows.append(row)
    return {"test": rows}


def text_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    n = max(1, len(references))
    return {"exact_match": sum(map(exact_match, predictions, references)) / n,
            "token_f1": sum(map(token_f1, predictions, references)) / n}


def format_eval_table(report: dict[str, Any]) -> str:
    lines = ["| source | task | n | metric | model | majority | random |", "|---|---|---|---|---|---|---|"]
    for row in report["test"]:
        for metric, value in row["model"].items():
            lines.append(f"| {row['source']} | {row['task']} | {row['n']} | {metric} | {value:.3f} | "
                         f"{row['majority'][metric]:.3f} | {row['random'][metric]:.3f} |")
    if "val_loss" in report:
        lines.append(f"\nval_loss {report['val_loss']:.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------


def run_finetuning(config: FinetuneConfig) -> Any:
    if config.method != "sft":
        from finetune.preference import run_preference

        return run_preference(config)
    from data_pipelines.mixture import load_mixture

    if not config.pretrained:
        raise ValueError("no pretrained checkpoint: pass --from DIR (a directory written by `seq2seq pretrain`)")
    model, tokenizer = load_pretrained(config.pretrained)
    model = adapt(model, config.model)
    train_examples = load_mixture(config.data.mixture, "train")
    if not train_examples:
        raise ValueError(f"{config.data.mixture}/train.jsonl has no training examples")
    val_examples = load_mixture(config.data.mixture, "val")
    if not val_examples:  # a val loss over zero tokens would read 0.0
        raise ValueError(f"{config.data.mixture}/val.jsonl has no examples, so there is no val loss to measure "
                         f"(rebuild the mixture with a val split)")
    test_examples = load_mixture(config.data.mixture, "test")
    run_config = to_dict(config)
    run_config["model"] = model.config.to_dict()
    inference = inference_config(tokenizer)

    def export_extra(directory: Path) -> None:
        write_json_atomic(directory / INFERENCE_FILE, inference)

    accelerator = make_accelerator(config.train, Path(config.output_dir))
    task = FinetuningTask(config, tokenizer, train_examples, val_examples, accelerator.num_processes)
    trainer = Trainer(config.train, model.train(), task, config.output_dir, tokenizer=tokenizer,
                      run_config=run_config, export_extra=export_extra, accelerator=accelerator)
    if trainer.is_main:
        print(f"fine-tuning {config.pretrained} ({model.num_parameters():,} parameters) on {config.data.mixture}: "
              f"{len(train_examples):,} train / {len(val_examples):,} val / {len(test_examples):,} test examples; "
              f"padding {trainer.task.train.padding_fraction():.1%} of batch tokens", file=sys.stderr)
    result = trainer.fit(config.resume, overwrite=config.overwrite, allow_changes=config.resume_allow_changes)
    if result.interrupted or not trainer.is_main:
        return result
    report = evaluate_test(trainer.bare_model.eval(), tokenizer, config, train_examples, test_examples)
    report["val_loss"] = result.metrics.get("val_loss", math.nan)
    report["padding_fraction"] = trainer.task.train.padding_fraction()
    report["step"] = result.step
    write_json_atomic(Path(config.output_dir) / "eval.json", report)
    log_eval(trainer, report)
    print(format_eval_table(report))
    return result


def log_eval(trainer: Trainer, report: dict[str, Any]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(Path(trainer.output_dir) / "tensorboard" / "eval"))
    for row in report["test"]:
        for system in ("model", "majority", "random"):
            for metric, value in row[system].items():
                writer.add_scalar(f"test/{row['source']}/{row['task']}/{metric}/{system}", value, report["step"])
    writer.add_text("test/table", format_eval_table(report), report["step"])
    writer.close()


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.pretrained:
        overrides.append(f"pretrained={args.pretrained}")
    if args.overwrite:
        overrides.append("overwrite=true")
    result = run_finetuning(load_config(args.config, overrides))
    return result.exit_code()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/finetune/default.yaml")
    parser.add_argument("--from", dest="pretrained", metavar="DIR",
                        help="pretrained checkpoint directory, e.g. runs/pretrain-shakespeare-cpu/final")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even if output_dir holds another run (its checkpoints and model go)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. train.lr=1e-4 train.max_steps=100 resume=latest")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a pretrained model on the prompt->response mixture",
        description="Fine-tune on the mixture built by `seq2seq data build`: answers, tone control (plain, joke, "
                    "sarcastic) and joke/sarcasm classification; evaluates on the test split at the end.")
    add_arguments(parser)
    parser.set_defaults(run=run)

