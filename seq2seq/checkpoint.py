"""The checkpoint format: a directory holding `config.json` (the `ModelConfig`), `model.safetensors` (the
weights; no pickle) and, once a tokenizer exists, `tokenizer.model`. Directories are written whole to a
temporary sibling and renamed into place, so a crash never leaves a half-written checkpoint.

Loading refuses, with a `CheckpointError` naming the file (and the tensor): weights that are not floating point
or not finite (NaN, inf), and a config that asks for more parameters than the weights file holds, which is
checked before the model is built, so a config.json that says 2**40 never allocates anything.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from seq2seq.model import ModelConfig, Transformer, count_parameters
from seq2seq.runtime import unwrap
from seq2seq.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"
# Checkpoints written before the extension points had their names kept the extensions under these prefixes.
LEGACY_PREFIXES = {"src_ngrams.": "source_extension.", "copy.": "output_head."}


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete or corrupt; the message names the file."""


@contextmanager
def atomic_directory(directory: str | Path):
    """Yield a fresh temporary directory beside `directory`; on success it replaces `directory`.
    The old directory is moved aside before the new one is renamed in, and removed only after."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield tmp
        for path in tmp.iterdir():  # data reaches the disk before the rename makes it visible
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_model_files(directory: Path, model: Transformer, tokenizer=None) -> None:
    """Write config.json, model.safetensors and tokenizer.model into an existing directory."""
    config = {"format_version": 1, **model.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # save_model drops the aliases that weight tying creates (safetensors refuses shared tensors).
    save_model(unwrap(model), str(directory / WEIGHTS_FILE))
    if tokenizer is not None:
        if tokenizer.vocab_size != model.config.vocab_size:
            raise CheckpointError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size "
                                  f"is {model.config.vocab_size}")
        tokenizer.save(directory)


def save_pretrained(model: Transformer, directory: str | Path, tokenizer=None,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Write a checkpoint directory atomically. `extra(tmp_dir)` may add more files before the rename."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        write_model_files(tmp, model, tokenizer)
        if extra is not None:
            extra(tmp)
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory (it does not exist)")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a checkpoint directory holds {CONFIG_FILE}, {WEIGHTS_FILE} "
                              f"and {TOKENIZER_FILE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: corrupt JSON ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    data.pop("format_version", None)
    try:
        return ModelConfig.from_dict(data)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None


def load_state_dict(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, each floating point and finite."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: corrupt safetensors file ({error})") from None
    for name, tensor in state.items():
        if not tensor.is_floating_point():  # copied into float parameters, int8 codes would load as nonsense
            raise CheckpointError(f"{path}: tensor {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                                  f"weights must be floating point (float32, bfloat16 or float16)")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values: the weights are corrupt "
                                  f"(saved from a training run that diverged?)")
    return state


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """The model in a checkpoint directory, in eval mode."""
    directory = Path(directory)
    config = load_config(directory)
    path = directory / WEIGHTS_FILE
    state = {rename_legacy(name): tensor for name, tensor in load_state_dict(path, device).items()}
    needed, stored = count_parameters(config), sum(tensor.numel() for tensor in state.values())
    if needed > stored:  # before building: the config alone decides how much the model allocates
        raise CheckpointError(f"{directory / CONFIG_FILE}: describes a model of {needed:,} parameters, but {path} "
                              f"holds {stored:,} values: this config does not belong to these weights")
    model = Transformer(config).to(device)
    expected = model.state_dict()
    # Tied weights are stored once, under one of their names; their aliases load with it.
    stored_ptrs = {expected[name].data_ptr() for name in state if name in expected}
    missing = [name for name, tensor in expected.items()
               if name not in state and tensor.data_ptr() not in stored_ptrs]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match {directory / CONFIG_FILE}: missing tensors "
                              f"{missing[:5]}, unexpected tensors {unexpected[:5]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, the config needs "
                                  f"{tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def rename_legacy(name: str) -> str:
    for old, new in LEGACY_PREFIXES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def load_tokenizer(directory: str | Path) -> Tokenizer:
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (train one with `seq2seq data tokenizer`)")
    return Tokenizer.load(path)


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a checkpoint directory; the tokenizer must match the model's vocabulary."""
    model = load_model(directory, device)
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"{Path(directory) / TOKENIZER_FILE}: {tokenizer.vocab_size} tokens, but "
                              f"{Path(directory) / CONFIG_FILE} says vocab_size {model.config.vocab_size}")
    return model, tokenizer
