"""The training loop shared by pretraining and fine-tuning.

A recipe (pretrain/, finetune/) hands `train()` a model, a `TrainingTask` that makes batches and evaluates,
and a `TrainConfig`. The loop gives every recipe the same features:

- Devices and precision through Hugging Face Accelerate: `device: auto|cpu|cuda|mps`, `precision: auto`
  (bf16 autocast on CUDA, fp32 on MPS and CPU) or `fp32` / `bf16`; several processes (DDP) under
  `accelerate launch`.
- Batches are a pure function of (seed, step): the global batch of a step is the same whatever the number of
  processes or accumulation steps, so a 2-process run matches a 1-process run and resuming needs only the
  step. Losses are token-weighted over the whole global batch (not averaged per micro-batch).
- AdamW with no weight decay on norms, biases and embeddings; linear warmup then cosine decay to
  `min_lr_ratio * lr` over `decay_steps` (default `max_steps`); gradient clipping; gradient accumulation.
- A NaN/inf loss or gradient skips the step with a warning; `max_bad_steps` in a row stop the run with an
  error. A checkpoint is never written with non-finite weights.
- Checkpoints every `save_every` steps and before the final evaluation: weights (safetensors), optimizer and
  scheduler (loaded with `torch.load(weights_only=True)`), RNG states, step, the config and how many rows the log
  held; each written atomically; the last `keep_checkpoints` kept. `resume: latest` or a path continues exactly.
- What survives a kill (docs/reliability.md): a checkpoint is the state between two steps. Ctrl-C stops at the
  next step boundary and saves there (a second Ctrl-C stops at once, keeping the last checkpoint). A resume cuts
  metrics.jsonl back to the rows the checkpoint saw (a line torn by a kill is dropped with a warning), refuses a
  changed config unless the key is listed in `CHANGEABLE_ON_RESUME` or `resume_allow_changes`, and
  `resume: latest` falls back to the previous checkpoint when the latest is corrupt. `output_dir` is locked
  while a run uses it; temporary files a killed run left there are removed at start; a fresh run into a folder
  holding another run's checkpoints is an error unless `overwrite`.
- Evaluation every `eval_every` steps (a quick subset) and a full one at the end; a text sample per eval;
  TensorBoard through Accelerate's tracker and the same numbers in `metrics.jsonl`; a tqdm bar.

Raises:
    ValueError: batch_size not divisible by processes x grad_accum_steps; unknown device or precision; a bad
        value (named); output_dir in use by another run, a file, or holding another run; a changed config.
    CheckpointError: the checkpoint to resume is incomplete or corrupt (the message names the file).
    NonFiniteLossError: `max_bad_steps` consecutive non-finite steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm

from seq2seq.checkpoint import CheckpointError, atomic_directory, load_state_dict, save_pretrained, write_model_files
from seq2seq.files import write_json_atomic, write_text_atomic
from seq2seq.model import Transformer

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

MAX_LR = 10.0  # a learning rate above this is a typo (1e9 for 1e-4), not a setting


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step, over all processes and accumulation steps
    grad_accum_steps: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    decay_steps: int | None = None  # the cosine's length; None: max_steps (set it to resume into a longer run)
    weight_decay: float = 0.1
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # 5.3: beta2 0.98
    adam_eps: float = 1e-9
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    log_every: int = 10
    eval_every: int = 200
    eval_at_minutes: list[float] = field(default_factory=list)  # also a full evaluation at these training times
    save_every: int = 500
    keep_checkpoints: int = 2
    max_bad_steps: int = 5
    early_stopping_patience: int | None = None  # evals without a new best val_loss before stopping
    num_threads: int | None = None  # torch CPU threads; None: torch's default

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum_steps", "log_every", "eval_every", "save_every",
                     "keep_checkpoints", "max_bad_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        for name in ("decay_steps", "early_stopping_patience", "num_threads"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive (or null), got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR):  # NaN fails every comparison
            raise ValueError(f"train.lr must be a number in (0, {MAX_LR:g}], got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        for name, low, high in (("min_lr_ratio", 0, 1), ("label_smoothing", 0, 1), ("weight_decay", 0, math.inf),
                                ("grad_clip", 0, math.inf), ("adam_eps", 0, 1)):
            value = getattr(self, name)
            if not (low <= value <= high and math.isfinite(value)):
                raise ValueError(f"train.{name} must be a finite number in [{low}, {high}], got {value}")
        if len(self.adam_betas) != 2 or not all(0 <= beta < 1 for beta in self.adam_betas):
            raise ValueError(f"train.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not all(math.isfinite(m) and m >= 0 for m in self.eval_at_minutes):
            raise ValueError(f"train.eval_at_minutes must be finite numbers >= 0, got {self.eval_at_minutes}")


@dataclass
class Batch:
    """One micro-batch on one process. Masks are True at padding; None means no padding."""

    src_ids: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    src_padding_mask: torch.Tensor | None = None
    tgt_padding_mask: torch.Tensor | None = None
    tgt_weights: torch.Tensor | None = None  # each target position's weight in the loss; None: 1 where not pad

    def to(self, device: torch.device) -> Batch:
        # Not dataclasses.astuple, which deep-copies every tensor.
        return Batch(*(None if t is None else t.to(device, non_blocking=True)
                       for t in (getattr(self, f.name) for f in dataclasses.fields(self))))

    def loss_weight(self, pad_id: int) -> torch.Tensor:
        """What the summed loss of this batch is divided by, summed over the global batch: its target tokens, or
        the sum of their weights."""
        if self.tgt_weights is None:
            return (self.tgt_out != pad_id).sum().float()
        return self.tgt_weights.masked_fill(self.tgt_out == pad_id, 0.0).sum().float()

    def num_tokens(self) -> int:
        """Source plus target tokens that are not padding (the tokens/s figure counts these)."""
        src = self.src_ids.numel() - (0 if self.src_padding_mask is None else int(self.src_padding_mask.sum()))
        tgt = self.tgt_in.numel() - (0 if self.tgt_padding_mask is None else int(self.tgt_padding_mask.sum()))
        return src + tgt


class TrainingTask(Protocol):
    """What a recipe provides to the loop."""

    def batches(self, step: int, rank: int, world_size: int, accum_steps: int) -> list[Batch]:
        """This process's micro-batches of global step `step` (a pure function of its arguments)."""

    def evaluate(self, model: Transformer, accelerator: Accelerator, full: bool) -> dict[str, float]:
        """Validation metrics (at least `val_loss`). `full` at the end of training: all of val."""

    # Optional: `make_objective(model) -> torch.nn.Module`, whose forward(batch, label_smoothing) is the summed loss
    # of a micro-batch (batches then have `to`, `loss_weight` and `num_tokens` as `Batch` has) and whose
    # `pop_metrics()` gives the step's extra metrics to log. Without it the loss is `SequenceLoss`.

    def sample(self, model: Transformer) -> str | None:
        """A short generated text for the logs, or None."""


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainResult:
    step: int
    final_dir: Path | None
    metrics: dict[str, float]
    interrupted: bool = False
    stopped_early: bool = False

    def exit_code(self) -> int:
        """What a command returns: 130 (as for SIGINT) when Ctrl-C stopped the run after its checkpoint."""
        if self.interrupted:
            return 130
        print(f"model exported to {self.final_dir}")
        return 0


# ---------------------------------------------------------------------------------------------------------


def make_accelerator(config: TrainConfig, output_dir: Path, log: bool = True) -> Accelerator:
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda: no CUDA device is available")
    if config.device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device=mps: Apple MPS is not available")
    cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()
                                     and not torch.backends.mps.is_available())
    if config.precision == "auto":
        mixed = "bf16" if (not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()) else "no"
    else:
        mixed = "bf16" if config.precision == "bf16" else "no"
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed,
        log_with="tensorboard" if log else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "tensorboard")),
    )


def parameter_groups(model: Transformer, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices of linear layers only; not norms, biases or embeddings (modules that say
    `no_weight_decay`)."""
    no_decay = set()
    for module in model.modules():
        if getattr(module, "no_weight_decay", False) or isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, other = [], []
    for parameter in model.parameters():  # tied parameters appear once
        (other if id(parameter) in no_decay or parameter.dim() < 2 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    decay_steps = config.decay_steps or config.max_steps

    def factor(step: int) -> float:  # `step` optimizer steps done so far
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        progress = min(1.0, (step - config.warmup_steps) / max(1, decay_steps - config.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine

    return factor


# -- checkpoints ----------------------------------------------------------------------------------------------

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (their trainer_state.json is written last), oldest first."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))
             and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        dirs = checkpoint_dirs(output_dir)
        return dirs[-1] if dirs else None  # nothing saved yet: start fresh
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"resume: {path} is not a training checkpoint (no trainer_state.json)")
    return path


# -- the loop ---------------------------------------------------------------------------------------------------


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        model: Transformer,
        task: TrainingTask,
        output_dir: str | Path,
        tokenizer=None,
        run_config: dict[str, Any] | None = None,
        export_extra: Callable[[Path], None] | None = None,
        accelerator: Accelerator | None = None,
        log: bool = True,
    ):
        self.config = config
        self.task = task
        self.tokenizer = tokenizer
        self.output_dir = Path(output_dir)
        self.run_config = run_config or {}
        self.export_extra = export_extra
        self.accelerator = accelerator or make_accelerator(config, self.output_dir, log)
        world = self.accelerator.num_processes
        if config.batch_size % (world * config.grad_accum_steps):
            raise ValueError(f"train.batch_size ({config.batch_size}) must be divisible by processes ({world}) x "
                             f"train.grad_accum_steps ({config.grad_accum_steps})")
        torch.manual_seed(config.seed + self.accelerator.process_index)  # dropout differs per process
        optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                      betas=tuple(config.adam_betas), eps=config.adam_eps)
        # The module whose forward is the loss: the task's own objective (preference tuning), or cross-entropy.
        objective = task.make_objective(model) if hasattr(task, "make_objective") else SequenceLoss(model)
        self.model, self.optimizer = self.accelerator.prepare(objective, optimizer)
        # The scheduler is stepped by hand once per optimizer step (a prepared one steps once per process).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.step = 0
        self.saved_step: int | None = None  # the step of the last checkpoint written or resumed from
        self.best_val_loss = math.inf
        self.evals_since_best = 0
        self.bad_steps = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0  # wall-clock time spent in training steps (not evaluating or saving)
        self.metrics_path = self.output_dir / "metrics.jsonl"

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def bare_model(self) -> Transformer:
        return self.accelerator.unwrap_model(self.model).model

    # -- logging -------------------------------------------------------------------------------------------

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        self.accelerator.log(metrics, step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        if not self.is_main:
            return
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_text(tag, text, step)
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, tag: text}) + "\n")

    # -- state -----------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step-N atomically on the main process; every process adds its RNG state."""
        model = self.bare_model
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise NonFiniteLossError(f"refusing to save step {self.step}: the weights hold NaN or inf")
        target = self.output_dir / "checkpoints" / f"step-{self.step:07d}"
        rng_dir = self.output_dir / "checkpoints" / f".rng-{self.step:07d}"
        rng_dir.mkdir(parents=True, exist_ok=True)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, rng_dir / f"rng-{self.accelerator.process_index}.pt")
        self.accelerator.wait_for_everyone()
        if self.is_main:
            with atomic_directory(target) as tmp:
                write_model_files(tmp, model, self.tokenizer)
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                for path in rng_dir.iterdir():
                    shutil.copy(path, tmp / path.name)
                state = {"step": self.step, "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                         "best_val_loss": self.best_val_loss,
                         "evals_since_best": self.evals_since_best, "bad_steps": self.bad_steps,
                         "data_position": {"step": self.step}, "config": self.run_config}
                (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
            shutil.rmtree(rng_dir, ignore_errors=True)
            for old in checkpoint_dirs(self.output_dir)[:-self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.saved_step = self.step
        return target

    def load_checkpoint(self, path: Path) -> None:
        from seq2seq.checkpoint import load_state_dict

        state = json.loads((path / "trainer_state.json").read_text())
        weights = load_state_dict(path / "model.safetensors", "cpu")
        self.bare_model.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng_path = path / f"rng-{self.accelerator.process_index}.pt"
        if rng_path.is_file():
            rng = torch.load(rng_path, weights_only=True)
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        else:
            warnings.warn(f"{rng_path} missing (different process count?): dropout will not repeat exactly",
                          stacklevel=2)
        self.step = self.saved_step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.train_seconds = state.get("train_seconds", 0.0)
        self.best_val_loss = state["best_val_loss"]
        self.evals_since_best = state["evals_since_best"]
        self.bad_steps = state["bad_steps"]
        if self.is_main and self.metrics_path.is_file():  # drop what the interrupted run logged after this point
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.step]
            self.metrics_path.write_text("".join(line + "\n" for line in kept))

    # -- one step ------------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float] | None:
        """One optimizer step over the global batch; None when the step was skipped as non-finite."""
        accelerator = self.accelerator
        batches = [b.to(accelerator.device) for b in self.task.batches(
            self.step, accelerator.process_index, accelerator.num_processes, self.config.grad_accum_steps)]
        counts = torch.stack([b.loss_weight(self.bare_model.config.pad_id) for b in batches])
        global_targets = accelerator.reduce(counts.sum(), reduction="sum")
        # DDP averages gradients over processes; scale so the result is the sum over the global batch / its tokens
        # (or their summed weights).
        scale = accelerator.num_processes / global_targets
        self.model.train()
        loss_sum = torch.zeros((), device=accelerator.device)
        tokens = 0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            with accelerator.no_sync(self.model) if not sync else nullcontext():
                with accelerator.autocast():
                    loss = self.model(batch, self.config.label_smoothing)
                accelerator.backward(loss * scale)
            loss_sum += loss.detach()
            tokens += batch.num_tokens()
        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        total_loss = accelerator.reduce(loss_sum, reduction="sum") / global_targets
        finite = bool(torch.isfinite(total_loss)) and bool(torch.isfinite(grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        if finite:
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            warnings.warn(f"step {self.step}: non-finite loss or gradient (loss {float(total_loss)}, grad norm "
                          f"{float(grad_norm)}); step skipped ({self.bad_steps} in a row)", stacklevel=2)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += tokens * accelerator.num_processes
        if self.bad_steps >= self.config.max_bad_steps:
            raise NonFiniteLossError(f"{self.bad_steps} steps in a row had a non-finite loss or gradient "
                                     f"(last at step {self.step}); lower train.lr or check the data")
        objective_metrics = getattr(self.accelerator.unwrap_model(self.model), "pop_metrics", dict)()
        if not finite:
            return None
        return {"loss": float(total_loss), "lr": lr, "grad_norm": float(grad_norm), **objective_metrics,
                "tokens": tokens * accelerator.num_processes}

    # -- evaluation ------------------------------------------------------------------------------------------

    def evaluate(self, full: bool, extra: dict[str, float] | None = None) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            metrics = self.task.evaluate(self.bare_model, self.accelerator, full)
        if self.is_main and extra is None:
            sample = self.task.sample(self.bare_model)
            if sample is not None:
                self.log_text("sample", sample, self.step)
        self.log({**metrics, **(extra or {}), "train_minutes": self.train_seconds / 60}, self.step)
        return metrics

    def improved(self, metrics: dict[str, float]) -> bool:
        """Track the best val_loss; True when patience for early stopping has run out."""
        if metrics.get("val_loss", math.inf) < self.best_val_loss:
            self.best_val_loss = metrics["val_loss"]
            self.evals_since_best = 0
            return False
        self.evals_since_best += 1
        patience = self.config.early_stopping_patience
        return patience is not None and self.evals_since_best >= patience

    # -- the run -----------------------------------------------------------------------------------------------

    def export(self) -> Path:
        final = self.output_dir / "final"
        if self.is_main:
            save_pretrained(self.bare_model, final, self.tokenizer, extra=self.export_extra)
        self.accelerator.wait_for_everyone()
        return final

    def fit(self, resume: str | None = None) -> TrainResult:
        config = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        resume_path = resolve_resume(resume, self.output_dir)
        if resume_path is not None:
            self.load_checkpoint(resume_path)
        elif self.is_main and self.metrics_path.exists():
            self.metrics_path.unlink()  # a fresh run starts a fresh log
        if self.is_main:
            (self.output_dir / "run_config.json").write_text(json.dumps(self.run_config, indent=2) + "\n")
        self.accelerator.init_trackers("run", config=_flat_hparams(self.run_config))
        metrics: dict[str, float] = {}
        interrupted = stopped_early = False
        progress = tqdm(total=config.max_steps, initial=self.step, disable=not self.is_main, desc="train",
                        dynamic_ncols=True)
        window_tokens, window_seconds = 0, 0.0
        timed_evals = sorted(m for m in config.eval_at_minutes if m * 60 > self.train_seconds)
        try:
            while self.step < config.max_steps:
                start = time.perf_counter()
                result = self.train_step()
                step_seconds = time.perf_counter() - start
                self.train_seconds += step_seconds
                progress.update(1)
                if result is not None:
                    window_tokens += result["tokens"]
                    window_seconds += step_seconds
                    if self.step % config.log_every == 0 or self.step == config.max_steps:
                        result["tokens_per_s"] = window_tokens / max(window_seconds, 1e-9)
                        result["train_minutes"] = self.train_seconds / 60
                        window_tokens, window_seconds = 0, 0.0
                        del result["tokens"]
                        self.log(result, self.step)
                        progress.set_postfix(loss=f"{result['loss']:.3f}", lr=f"{result['lr']:.2e}",
                                             tok_s=f"{result['tokens_per_s']:.0f}")
                if self.step % config.eval_every == 0 and self.step < config.max_steps:
                    metrics = self.evaluate(full=False)
                    progress.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                    stopped_early = self.improved(metrics)
                while timed_evals and self.train_seconds >= timed_evals[0] * 60:
                    minutes = timed_evals.pop(0)
                    timed = self.evaluate(full=True, extra={"at_minutes": minutes})
                    progress.write(f"after {minutes} min of training (step {self.step}): "
                                   + ", ".join(f"{k} {v:.4f}" for k, v in timed.items()))
                if self.step % config.save_every == 0 or stopped_early:
                    self.save_checkpoint()
                if stopped_early:
                    progress.write(f"early stopping at step {self.step}: no better val_loss in "
                                   f"{self.evals_since_best} evaluations")
                    break
        except KeyboardInterrupt:
            interrupted = True
            progress.write(f"interrupted: saving a checkpoint at step {self.step} (resume with resume=latest)")
        finally:
            progress.close()
        if interrupted:
            self.save_checkpoint()
            self.accelerator.end_training()
            return TrainResult(self.step, None, metrics, interrupted=True)
        metrics = self.evaluate(full=True)
        self.improved(metrics)
        if self.is_main:
            print(f"final (step {self.step}): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if self.saved_step != self.step:  # remembered, not looked up: processes need not share a filesystem
            self.save_checkpoint()
        final = self.export()
        self.accelerator.end_training()
        return TrainResult(self.step, final, metrics, stopped_early=stopped_early)


class SequenceLoss(torch.nn.Module):
    """A Transformer whose `forward` is its training loss: DDP synchronises gradients only through the
    wrapped module's `forward`, so this is what `accelerator.prepare` wraps."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, label_smoothing: float) -> torch.Tensor:
        return self.model.loss(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.src_padding_mask,
                               batch.tgt_padding_mask, label_smoothing, reduction="sum", weights=batch.tgt_weights)


def _flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """TensorBoard hparams take scalars and strings only."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_hparams(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat

