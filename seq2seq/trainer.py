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
from collections.abc import Callable, Iterable, Iterator, Sequence
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


# -- run folders and checkpoints ------------------------------------------------------------------------------

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
LOCK_FILE = ".lock"
# What an interrupted atomic write leaves beside its target: atomic_directory's `.NAME.tmp-*` and `.NAME.old-PID`,
# write_text_atomic's `.NAME.tmp-*`.
TEMPORARY = re.compile(r"^\..+\.(tmp|old)-[^/]*$")
# Config keys (or whole sections) a resume may change without `resume_allow_changes`: where the run is and how it
# was started, how long it trains, how often it logs, evaluates and saves, and the recipes' `eval` section (what
# is measured, not what is trained). With train.decay_steps unset, the cosine follows a changed max_steps.
CHANGEABLE_ON_RESUME = ("output_dir", "resume", "overwrite", "resume_allow_changes", "train.max_steps",
                        "train.log_every", "train.eval_every", "train.eval_at_minutes", "train.save_every",
                        "train.keep_checkpoints", "train.early_stopping_patience", "train.max_bad_steps",
                        "train.num_threads", "eval")


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (their trainer_state.json is written last), oldest first."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))
             and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resume_candidates(resume: str | None, output_dir: Path) -> list[Path]:
    """The checkpoints to try, in order: for "latest" every complete one, newest first; else the one path."""
    if not resume:
        return []
    if resume == "latest":
        return checkpoint_dirs(output_dir)[::-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"resume: {path} is not a training checkpoint (no {STATE_FILE})")
    return [path]


@dataclass
class SavedState:
    """A checkpoint read whole into memory: a corrupt file is found before anything is loaded into the run."""

    path: Path
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor] | None  # this process's; None when the checkpoint has none for it


def read_checkpoint(path: Path, process_index: int) -> SavedState:
    """Raises CheckpointError naming the file that is missing, truncated or corrupt."""
    state_path = path / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{state_path}: unreadable ({_one_line(error)})") from None
    counts = ("step", "tokens_seen", "evals_since_best", "bad_steps")
    if not (isinstance(state, dict) and all(isinstance(state.get(key), int) for key in counts)
            and isinstance(state.get("best_val_loss"), (int, float))):
        raise CheckpointError(f"{state_path}: not a trainer state (it needs the integers {', '.join(counts)} and "
                              f"best_val_loss)")
    rng_path = path / f"rng-{process_index}.pt"
    return SavedState(path, state, load_state_dict(path / "model.safetensors", "cpu"),
                      _load_tensors(path / "optimizer.pt"), _load_tensors(path / "scheduler.pt"),
                      _load_tensors(rng_path) if rng_path.exists() else None)


def _load_tensors(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path}: truncated or corrupt ({_one_line(error)})") from None


def _one_line(error: BaseException) -> str:
    """An error's first sentence on one line."""
    return " ".join(str(error).split()).split(". ")[0][:200] or type(error).__name__


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as `section.key: value`."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _listed(key: str, names: Iterable[str]) -> bool:
    """Whether `key` is one of `names` or lies in a section named there."""
    return any(key == name or key.startswith(f"{name}.") for name in names)


def config_fingerprint(config: dict[str, Any]) -> str:
    """What identifies a run: a hash of its config without the keys a resume may change."""
    checked = {key: value for key, value in flatten(config).items() if not _listed(key, CHANGEABLE_ON_RESUME)}
    return hashlib.sha256(json.dumps(checked, sort_keys=True).encode()).hexdigest()[:16]


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, current value)} for the keys that differ, except those a resume may change."""
    old, new = flatten(saved), flatten(current)
    unset = "(unset)"
    return {key: (old.get(key, unset), new.get(key, unset)) for key in sorted(old.keys() | new.keys())
            if old.get(key, unset) != new.get(key, unset) and not _listed(key, CHANGEABLE_ON_RESUME)}


@contextmanager
def locked(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir/.lock` while a run uses the folder: a second run into it is an error, not a second writer
    of the same checkpoints and log. The lock goes with the process however it ends, kill -9 included."""
    if fcntl is None:
        yield
        return
    path = output_dir / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ValueError(f"output_dir {output_dir} is in use by another run ({holder} holds {path}): wait for "
                             f"it to end, or choose another output_dir") from None
        except OSError as error:  # a filesystem without locks
            warnings.warn(f"{path}: cannot lock ({_one_line(error)}); nothing stops a second run into "
                          f"{output_dir}", stacklevel=3)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield


def remove_stale(output_dir: Path) -> list[str]:
    """Remove what killed runs left in output_dir: temporaries of atomic writes (`.NAME.tmp-*`, `.NAME.old-*`),
    unfinished checkpoints' RNG folders (`.rng-N`), checkpoints pruning had begun to delete (`.step-N.pruned`, or
    a step-N without trainer_state.json). Only under the lock: another run's temporaries are not stale."""
    stale = [p for p in output_dir.iterdir() if TEMPORARY.match(p.name)]
    root = output_dir / "checkpoints"
    if root.is_dir():
        stale += [p for p in root.iterdir() if p.name.startswith(".")
                  or (STEP_DIR.match(p.name) and not (p / STATE_FILE).is_file())]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return sorted(str(p.relative_to(output_dir)) for p in stale)


class Interrupts:
    """Ctrl-C (SIGINT) during a run takes effect at the next step boundary: the step in progress, its log rows,
    evaluation and checkpoint finish first, so the checkpoint written on Ctrl-C is the state between two steps
    (weights, optimizer, random state and log agree) whenever the signal came. A second Ctrl-C stops at once (the
    last checkpoint is then the one to resume); with `immediate` the first one does. A process started with
    SIGINT ignored keeps ignoring it."""

    def __init__(self) -> None:
        self.requested = False
        self.immediate = False
        self._previous: Any = None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) not in (
                signal.SIG_IGN, None):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested or self.immediate:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: stopping after this step, with a checkpoint (Ctrl-C again to stop now; resume=latest "
              "then continues from the last checkpoint)", file=sys.stderr, flush=True)


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
        # The config a checkpoint records and a resume compares: the recipe's, with the model's and the loop's own.
        self.run_config = json.loads(json.dumps({**(run_config or {}), "model": model.config.to_dict(),
                                                 "train": dataclasses.asdict(config)}))
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
        self.log_rows = 0  # rows in metrics.jsonl (a checkpoint records it: a resume cuts the log back to it)

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
        self.append_row({"step": step, **metrics})
        self.accelerator.log(metrics, step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        if not self.is_main:
            return
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_text(tag, text, step)
        self.append_row({"step": step, tag: text})

    def append_row(self, row: dict[str, Any]) -> None:
        """One line of metrics.jsonl in one unbuffered write: a kill tears at most the last line."""
        with open(self.metrics_path, "ab", buffering=0) as handle:
            handle.write((json.dumps(row) + "\n").encode())
        self.log_rows += 1

    def restore_log(self, rows: int | None) -> None:
        """metrics.jsonl as it was when the checkpoint was written: what the interrupted run logged after it is
        dropped (the resumed run logs it again, once), and so is a line a kill tore, with a warning naming it.
        A finished run's final evaluation, logged after its last checkpoint, stays when the resumed run trains
        on (it will not evaluate that step again)."""
        kept: list[tuple[dict[str, Any], bytes]] = []
        lines = self.metrics_path.read_bytes().split(b"\n") if self.metrics_path.is_file() else []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                warnings.warn(f"{self.metrics_path}, line {number}: not a whole JSON row (cut short when the run "
                              f"was killed?); dropped", stacklevel=2)
                continue
            kept.append((row, line))
        if rows is None:  # a checkpoint from before rows were counted: keep the rows up to its step
            kept = [(row, line) for row, line in kept if row.get("step", 0) <= self.step]
        elif self.step < self.config.max_steps:
            kept = kept[:rows] + [(row, line) for row, line in kept[rows:] if row.get("step") == self.step]
        else:
            kept = kept[:rows]
        write_text_atomic(self.metrics_path, "".join(line.decode() + "\n" for _, line in kept))
        self.log_rows = len(kept)

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
                         "data_position": {"step": self.step}, "log_rows": self.log_rows,
                         "config_fingerprint": config_fingerprint(self.run_config), "config": self.run_config}
                write_json_atomic(tmp / STATE_FILE, state)
            shutil.rmtree(rng_dir, ignore_errors=True)
            for old in checkpoint_dirs(self.output_dir)[:-self.config.keep_checkpoints]:
                doomed = old.with_name(f".{old.name}.pruned")  # a kill while deleting leaves a hidden folder,
                os.replace(old, doomed)  # removed at the next start, not a step-N that looks complete
                shutil.rmtree(doomed, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.saved_step = self.step
        return target

    def resume(self, resume: str | None, allow_changes: Sequence[str]) -> bool:
        """Load the checkpoint `resume` names; False when there is none (resume unset, or nothing saved yet).
        With "latest", a checkpoint that cannot be read falls back to the one before it, with a warning."""
        failed = []
        for path in resume_candidates(resume, self.output_dir):
            try:
                saved = read_checkpoint(path, self.accelerator.process_index)
            except CheckpointError as error:
                if resume != "latest":
                    raise
                warnings.warn(f"resume=latest: {error}; trying the checkpoint before it", stacklevel=2)
                failed.append(str(error))
                continue
            self.check_config(saved, allow_changes)
            self.load_checkpoint(saved)
            return True
        if failed:
            raise CheckpointError(f"resume=latest: no checkpoint in {self.output_dir / 'checkpoints'} can be read "
                                  f"({'; '.join(failed)}): start a new run with overwrite=true instead")
        return False

    def check_config(self, saved: SavedState, allow_changes: Sequence[str]) -> None:
        """A resume continues the run its checkpoint belongs to: a changed model, data or training key is an
        error naming it, unless `allow_changes` lists it."""
        recorded = saved.state.get("config")
        if not isinstance(recorded, dict):
            warnings.warn(f"{saved.path / STATE_FILE} records no config: the config is not checked", stacklevel=3)
            return
        if saved.state.get("config_fingerprint") == config_fingerprint(self.run_config):
            return
        changes = config_changes(recorded, self.run_config)
        refused = [key for key in changes if not _listed(key, allow_changes)]
        if refused:
            shown = "; ".join(f"{key} {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused[:6])
            raise ValueError(f"resume: {saved.path} belongs to a run with another config ({shown}): resume with "
                             f"that config, allow the change with resume_allow_changes=[{','.join(refused)}], or "
                             f"start a new run in another output_dir")
        if changes:
            warnings.warn(f"resume: {saved.path} continues with changed {', '.join(changes)} (resume_allow_changes)",
                          stacklevel=3)

    def load_checkpoint(self, saved: SavedState) -> None:
        try:
            self.bare_model.load_state_dict(saved.weights, strict=False)
            self.optimizer.load_state_dict(saved.optimizer)
        except (RuntimeError, ValueError, KeyError) as error:  # only after resume_allow_changes allowed a change
            raise CheckpointError(f"{saved.path}: does not fit the model ({_one_line(error)})") from None
        self.scheduler.load_state_dict(saved.scheduler)
        if saved.rng is not None:
            torch.set_rng_state(saved.rng["torch"])
            if "cuda" in saved.rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(saved.rng["cuda"])
        else:
            warnings.warn(f"{saved.path}: no RNG state for process {self.accelerator.process_index} (different "
                          f"process count?): dropout will not repeat exactly", stacklevel=3)
        state = saved.state
        self.step = self.saved_step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.train_seconds = state.get("train_seconds", 0.0)
        self.best_val_loss = state["best_val_loss"]
        self.evals_since_best = state["evals_since_best"]
        self.bad_steps = state["bad_steps"]
        if self.is_main:
            self.restore_log(state.get("log_rows"))

    def start_fresh(self, overwrite: bool) -> None:
        """A new run: a folder holding another run's checkpoints or final model is refused, or with `overwrite`
        cleared (checkpoints/, final/, tensorboard/); the log starts empty."""
        held = [*checkpoint_dirs(self.output_dir), *[p for p in [self.output_dir / "final"] if p.exists()]]
        if held and not overwrite:
            names = ", ".join(str(p.relative_to(self.output_dir)) for p in held[-3:])
            raise ValueError(f"output_dir {self.output_dir} holds another run ({names}): continue it with "
                             f"resume=latest, replace it with overwrite=true (--overwrite), or choose another "
                             f"output_dir")
        self.accelerator.wait_for_everyone()  # every process has looked before the main one deletes
        if self.is_main:
            if overwrite:
                for name in ("checkpoints", "final", "tensorboard"):
                    shutil.rmtree(self.output_dir / name, ignore_errors=True)
            self.metrics_path.unlink(missing_ok=True)
        self.log_rows = 0

    def stop_requested(self, interrupts: Interrupts) -> bool:
        """Whether to stop before the next step; processes agree, or one would wait for the others forever."""
        if self.accelerator.num_processes == 1:
            return interrupts.requested
        flag = torch.tensor(float(interrupts.requested), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum") > 0)

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

    def fit(self, resume: str | None = None, overwrite: bool = False,
            allow_changes: Sequence[str] = ()) -> TrainResult:
        """Train to max_steps (or an early stop), evaluate and export. `resume`: "latest" or a checkpoint path;
        `overwrite`: a fresh run may replace another run in output_dir; `allow_changes`: config keys or sections a
        resume may change beyond CHANGEABLE_ON_RESUME."""
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir {self.output_dir} is a file, not a folder")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with Interrupts() as interrupts, locked(self.output_dir) if self.is_main else nullcontext():
            if self.is_main and (removed := remove_stale(self.output_dir)):
                warnings.warn(f"{self.output_dir}: removed what an interrupted run left: {', '.join(removed[:4])}"
                              + (f" and {len(removed) - 4} more" if len(removed) > 4 else ""), stacklevel=2)
            self.accelerator.wait_for_everyone()
            if not self.resume(resume, allow_changes):
                self.start_fresh(overwrite)
            if self.is_main:
                write_json_atomic(self.output_dir / "run_config.json", self.run_config)
            self.accelerator.init_trackers("run", config=_flat_hparams(self.run_config))
            return self.train(interrupts)

    def train(self, interrupts: Interrupts) -> TrainResult:
        config = self.config
        metrics: dict[str, float] = {}
        interrupted = stopped_early = False
        progress = tqdm(total=config.max_steps, initial=self.step, disable=not self.is_main, desc="train",
                        dynamic_ncols=True)
        window_tokens, window_seconds = 0, 0.0
        timed_evals = sorted(m for m in config.eval_at_minutes if m * 60 > self.train_seconds)
        try:
            while self.step < config.max_steps:
                if self.stop_requested(interrupts):
                    interrupted = True
                    break
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
        finally:
            progress.close()
        if interrupted:
            if self.step > 0 and self.saved_step != self.step:
                self.save_checkpoint()
            if self.is_main:
                print(f"interrupted at step {self.step}: continue with resume=latest", file=sys.stderr)
            self.accelerator.end_training()
            return TrainResult(self.step, None, metrics, interrupted=True)
        # The checkpoint comes before the final evaluation: a run stopped after it evaluates and exports again on
        # resume, and its log, cut back to the checkpoint, holds the final rows once.
        if self.saved_step != self.step:  # remembered, not looked up: processes need not share a filesystem
            self.save_checkpoint()
        # From here on nothing is lost by stopping: in one process the first Ctrl-C stops the final evaluation,
        # which can take long, at once.
        interrupts.immediate = self.accelerator.num_processes == 1
        try:
            if interrupts.requested:
                raise KeyboardInterrupt
            metrics = self.evaluate(full=True)
            if self.is_main:
                print(f"final (step {self.step}): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            final = self.export()
        except KeyboardInterrupt:
            if not interrupts.immediate:
                raise
            print(f"interrupted at step {self.step}, its checkpoint written: resume=latest evaluates and exports",
                  file=sys.stderr)
            return TrainResult(self.step, None, metrics, interrupted=True)
        finally:
            interrupts.immediate = False
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


def _flat_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """TensorBoard hparams take scalars and strings only."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in flatten(config).items() if value is not None and value != {}}
