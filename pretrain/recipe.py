"""Pretraining recipe: `seq2seq pretrain --config configs/pretrain/NAME.yaml [key=value ...]`
(also `python -m pretrain`).

What it does, and the keys that control it:
- Reads a tokenized corpus (`data.corpus`, built by `seq2seq data corpus`) and its tokenizer
  (`data.tokenizer`); they must match (the corpus records the tokenizer's sha256).
- Builds the model from `model` (ModelConfig fields; `model.preset: PATH` loads a file from configs/model/
  first, relative to the config file); vocab_size and pad_id come from the tokenizer.
- Trains with a mix of prefix-to-continuation and span corruption (`objective.*`), through the shared loop
  (`train.*`: see seq2seq/trainer.py for every feature and its key).
- Evaluates val loss per token and nats (and bits) per character of predicted text over consecutive spans of
  the val split: a subset of `eval.quick_spans` spans every `train.eval_every` steps, all of it at the end.
- Writes to `output_dir`: metrics.jsonl, tensorboard/, checkpoints/, final/ (config.json, model.safetensors,
  tokenizer.model). `resume: latest` continues the run in output_dir exactly; a resume with another config is
  an error unless `resume_allow_changes` lists the keys; a fresh run into a folder holding another run's
  checkpoints is an error unless `overwrite: true` (`--overwrite`). See docs/reliability.md.

Raises:
    FileNotFoundError: the corpus or tokenizer is missing (the message names the command that builds it).
    ValueError: an unknown key or bad value (named), or a corpus built with another tokenizer; an empty val
        split; output_dir in use, holding another run, or resumed with another config (seq2seq/trainer.py).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.corpus import load_corpus
from pretrain.objectives import ObjectiveConfig, PretrainingObjectives
from seq2seq.config import apply_overrides, from_dict, load_yaml, to_dict
from seq2seq.model import ModelConfig, Transformer
from seq2seq.perplexity import Spans, span_totals
from seq2seq.tokenizer import Tokenizer
from seq2seq.trainer import Batch, TrainConfig, Trainer


@dataclass
class DataConfig:
    corpus: str = "data/corpus/shakespeare"
    tokenizer: str = "data/tokenizer/tokenizer.model"


@dataclass
class EvalConfig:
    quick_spans: int = 64  # val spans in the frequent evaluations (evenly spread); the final one uses all
    batch_size: int = 32
    sample_prompt: str = "ROMEO:\nWhat light through yonder window breaks?\n"
    sample_tokens: int = 48


@dataclass
class PretrainConfig:
    output_dir: str = "runs/pretrain"
    resume: str | None = None  # "latest", or a checkpoints/step-N directory
    overwrite: bool = False  # a fresh run may replace another run's checkpoints and model in output_dir
    resume_allow_changes: list[str] = field(default_factory=list)  # config keys (or sections) a resume may change
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path: str | Path, overrides: list[str] = ()) -> PretrainConfig:
    data = apply_overrides(load_yaml(path), list(overrides))
    model = data.get("model") or {}
    if "preset" in model:
        preset_path = Path(path).parent / model.pop("preset")
        model = {**load_yaml(preset_path), **model}
    data["model"] = model
    try:
        return from_dict(PretrainConfig, data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def build_model_config(model: dict[str, Any], tokenizer: Tokenizer) -> ModelConfig:
    fields = {**model, "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id}
    return ModelConfig.from_dict(fields)


def resegment(corpus, tokenizer: Tokenizer, alpha: float, seed: int) -> np.ndarray:
    """The training split segmented at random (`Tokenizer.encode_sampled`), document by document: the text of
    each document between separators is decoded and encoded again; the separators stay. Holds a copy of the
    split in memory: meant for small corpora such as Tiny Shakespeare (0.5 s per copy)."""
    tokens = np.asarray(corpus.train, dtype=np.int64)
    separator = list(corpus.meta["separator_ids"])
    n = len(separator)
    if n == 1:
        bounds = np.flatnonzero(tokens == separator[0])
    else:
        windows = np.lib.stride_tricks.sliding_window_view(tokens, n)
        bounds = np.flatnonzero((windows == np.asarray(separator)).all(axis=1))
    parts, start = [], 0
    for k, bound in enumerate([*bounds.tolist(), len(tokens)]):
        if bound < start:
            continue  # inside the previous separator
        parts.append(np.asarray(tokenizer.encode_sampled(tokenizer.decode(tokens[start:bound]), alpha, seed + k)))
        if bound < len(tokens):
            parts.append(np.asarray(separator))
        start = bound + n
    return np.concatenate(parts).astype(np.int64)


def resegmented_copies(corpus, tokenizer: Tokenizer, copies: int, alpha: float, seed: int) -> list[np.ndarray]:
    """`copies` randomly segmented copies of the training split (copy k: `resegment` with seed + k), cached in
    `<corpus>/resegmented/`. SentencePiece's sampling is reproducible within a process but not across processes,
    whatever its seed, so the first run that asks for a copy makes it and every later process, resumed run and run
    of the same settings reads that file: they all train on the same tokens. Processes of one run that start
    together may each make one; the first to link it in place wins and all read the winner's (no barrier, which
    would have to match the training loop's collectives one for one). The file name holds the tokenizer's hash,
    the split's length, alpha and the seed."""
    if copies == 0:
        return []
    directory = Path(corpus.path) / "resegmented"
    key = f"{corpus.meta['tokenizer_sha256'][:12]}-{len(corpus.train)}-alpha{alpha}"
    arrays = []
    for copy in range(copies):
        path = directory / f"{key}-seed{seed + copy}.npy"
        if not path.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            with open(partial, "wb") as file:
                np.save(file, resegment(corpus, tokenizer, alpha, seed + copy).astype(np.int32))
            try:
                os.link(partial, path)  # atomic, and fails if another process got there first
            except FileExistsError:
                pass
            finally:
                partial.unlink()
        arrays.append(np.load(path).astype(np.int64))
    return arrays


class PretrainingTask:
    """The pretraining objectives plus the val measurement, as the shared loop expects them."""

    def __init__(self, config: PretrainConfig, tokenizer: Tokenizer, corpus):
        self.config = config
        self.tokenizer = tokenizer
        objective = config.objective
        resegmented = resegmented_copies(corpus, tokenizer, objective.sampled_segmentations, objective.sampling_alpha,
                                         config.train.seed)
        self.objectives = PretrainingObjectives(objective, corpus.train, tokenizer, config.train.batch_size,
                                                config.train.seed, resegmented)
        self.val = Spans(np.asarray(corpus.val), config.objective.src_len, config.objective.tgt_len)
        if len(self.val) == 0:
            raise ValueError(f"{config.data.corpus}: the val split is empty, so there is no val loss to measure "
                             f"(rebuild the corpus with a val source)")

    def batches(self, step: int, rank: int, world_size: int, accum_steps: int) -> list[Batch]:
        return self.objectives.batches(step, rank, world_size, accum_steps)

    def evaluate(self, model: Transformer, accelerator, full: bool) -> dict[str, float]:
        spans = list(range(len(self.val)))
        if not full and len(spans) > self.config.eval.quick_spans:
            spans = np.linspace(0, len(spans) - 1, self.config.eval.quick_spans).round().astype(int).tolist()
        mine = spans[accelerator.process_index::accelerator.num_processes]
        # The measurement `seq2seq eval --text` makes of any text (seq2seq/perplexity.py), over the val split.
        totals = span_totals(model, self.tokenizer, self.val, mine, self.config.eval.batch_size, accelerator.device)
        nll, tokens, chars = accelerator.reduce(totals, reduction="sum").tolist()
        return {"val_loss": nll / tokens, "val_nats_per_char": nll / chars,
                "val_bits_per_char": nll / chars / math.log(2), "val_tokens": tokens, "val_chars": chars}

    def sample(self, model: Transformer) -> str | None:
        from seq2seq.generation import GenerationConfig, generate
        from seq2seq.prompting import build_source

        source = build_source(self.tokenizer, self.config.eval.sample_prompt, task="prefix_lm", tone=None,
                              max_len=self.config.objective.src_len + 2)
        result = generate(model, self.tokenizer, [source.ids],
                          GenerationConfig(max_new_tokens=self.config.eval.sample_tokens))[0]
        return self.config.eval.sample_prompt + result.text


def run_pretraining(config: PretrainConfig) -> Any:
    tokenizer_path = Path(config.data.tokenizer)
    if not tokenizer_path.exists():
        raise FileNotFoundError(f"tokenizer not found: {tokenizer_path} (train it with `seq2seq data tokenizer`)")
    tokenizer = Tokenizer.load(tokenizer_path)
    corpus = load_corpus(config.data.corpus, tokenizer)
    model_config = build_model_config(config.model, tokenizer)
    torch.manual_seed(config.train.seed)
    model = Transformer(model_config)
    task = PretrainingTask(config, tokenizer, corpus)
    run_config = to_dict(config)
    run_config["model"] = model_config.to_dict()
    trainer = Trainer(config.train, model, task, config.output_dir, tokenizer=tokenizer, run_config=run_config)
    if trainer.is_main:
        print(f"model: {model.num_parameters():,} parameters; corpus {config.data.corpus}: "
              f"{len(corpus.train):,} train / {len(corpus.val):,} val tokens; device {trainer.accelerator.device}, "
              f"precision {trainer.accelerator.mixed_precision}, processes {trainer.accelerator.num_processes}",
              file=sys.stderr)
    return trainer.fit(config.resume, overwrite=config.overwrite, allow_changes=config.resume_allow_changes)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, [*args.overrides, *(["overwrite=true"] if args.overwrite else [])])
    result = run_pretraining(config)
    return result.exit_code()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/pretrain/shakespeare-cpu.yaml")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even if output_dir holds another run (its checkpoints and model go)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. train.lr=3e-4 train.max_steps=100 resume=latest")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain", help="pretrain the encoder-decoder on a tokenized corpus",
        description="Pretrain on a corpus built by `seq2seq data corpus`, with prefix-to-continuation and span "
                    "corruption objectives. Runs on CUDA, MPS or CPU, and under `accelerate launch`.")
    add_arguments(parser)
    parser.set_defaults(run=run)

