"""Shared fixtures: where the shared data is, and a small tokenizer trained on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seq2seq.tokenizer import Tokenizer

SHARED_DATA = Path(os.environ.get("SEQ2SEQ_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (`SEQ2SEQ_SHARED_DATA`, default <repo>/../shared/data); skips if absent."""
    if not (SHARED_DATA / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set SEQ2SEQ_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shakespeare_text(shared_data: Path) -> str:
    return (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_tokenizer(shakespeare_text: str, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """A 512-piece BPE tokenizer trained on Tiny Shakespeare's train split (a fraction of a second)."""
    return Tokenizer.train([shakespeare_text[:1_003_854]], tmp_path_factory.mktemp("tokenizer"), 512)


@pytest.fixture(scope="session")
def sample_raw_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw-data folder laid out like `data/raw/`: all of Tiny Shakespeare and the first lines of every other
    shared file (a few thousand records each), so pipelines run on real data in a second or two."""
    raw = tmp_path_factory.mktemp("raw")
    first_lines = {"dailydialog/train": 400, "dailydialog/validation": 60, "dailydialog/test": 60}
    for path in sorted(shared_data.rglob("*")):
        if not path.is_file() or path.name == "SOURCE.md" or path.parent == shared_data:
            continue
        relative = path.relative_to(shared_data)
        target = raw / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative.parts[0] == "tinyshakespeare":
            target.write_bytes(path.read_bytes())
        else:
            keep = first_lines.get(relative.parent.as_posix(), 3000)
            target.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:keep]))
    return raw
