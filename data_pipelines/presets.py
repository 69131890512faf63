"""Loading a YAML preset into a typed config, as every data command does."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from seq2seq.config import apply_overrides, from_dict, load_yaml

T = TypeVar("T")


def load_preset(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """`cls` from the YAML file at `path` (None: the defaults) with `key.sub=value` overrides applied; a bad
    key or value is a ValueError that names the file and the key."""
    data = apply_overrides(load_yaml(path) if path is not None else {}, list(overrides))
    try:
        return from_dict(cls, data)
    except ValueError as error:
        raise ValueError(f"{path or cls.__name__}: {error}") from None
