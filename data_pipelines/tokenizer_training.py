"""Training the SentencePiece tokenizer: `seq2seq data tokenizer`.

Trains on training splits only: Tiny Shakespeare's first 90% and the train splits of the fine-tuning
sources (users talk to the model in modern English), each capped at a number of characters so that ~11M
characters of modern text do not drown ~1M of Shakespeare. Reports tokens per character on each source's
val split. Defaults (vocab 4096, BPE, caps) were chosen by measurement: see docs/data.md.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data_pipelines.corpus import CorpusSource, documents
from data_pipelines.presets import load_preset
from seq2seq.config import to_dict
from seq2seq.records import InvalidRecords
from seq2seq.tokenizer import Tokenizer

KNOWN_SOURCES = ("tinyshakespeare", "dailydialog", "jokes_qa", "humor_colbert", "sarcasm_headlines")


@dataclass
class TokenizerConfig:
    vocab_size: int = 4096
    model_type: Literal["bpe", "unigram"] = "bpe"
    seed: int = 0
    # Source -> most characters of its training text to train on (null: all of it), sampled by document.
    sources: dict[str, int | None] = field(
        default_factory=lambda: {
            "tinyshakespeare": None,
            "dailydialog": 600_000,
            "jokes_qa": 200_000,
            "humor_colbert": 100_000,
            "sarcasm_headlines": 100_000,
        }
    )


def load_tokenizer_config(path: str | Path | None, overrides: list[str] = ()) -> TokenizerConfig:
    config = load_preset(TokenizerConfig, path, overrides)
    unknown = sorted(set(config.sources) - set(KNOWN_SOURCES))
    if unknown:
        raise ValueError(f"tokenizer sources: unknown source {unknown[0]!r} (known: {', '.join(KNOWN_SOURCES)})")
    return config


def training_text(config: TokenizerConfig, raw_dir: Path, invalid: InvalidRecords) -> dict[str, list[str]]:
    """Source -> the train-split documents the tokenizer learns from (a seeded sample up to each cap)."""
    rng = np.random.default_rng(config.seed)
    texts = {}
    for name, max_chars in config.sources.items():
        docs = documents(CorpusSource(kind=name), "train", raw_dir, invalid, Counter())
        if max_chars is not None:
            picked, total = [], 0
            for k in rng.permutation(len(docs)):
                if total >= max_chars:
                    break
                picked.append(docs[k][: max_chars - total])
                total += len(picked[-1])
            docs = picked
        texts[name] = docs
    return texts


def tokens_per_char(tokenizer: Tokenizer, raw_dir: Path, invalid: InvalidRecords) -> dict[str, float]:
    """Tokens per character on the val split of every known source present in `raw_dir`."""
    out = {}
    for name in KNOWN_SOURCES:
        try:
            docs = documents(CorpusSource(kind=name), "val", raw_dir, invalid, Counter())
        except FileNotFoundError:
            continue
        tokens = sum(len(ids) for ids in tokenizer.encode_batch(docs))
        out[name] = round(tokens / sum(len(doc) for doc in docs), 4)
    return out


def train_tokenizer(
    config: TokenizerConfig, raw_dir: Path, out_dir: Path, skip_invalid: bool = False
) -> tuple[Tokenizer, dict[str, Any]]:
    """Train, save `out_dir/tokenizer.model` and `out_dir/tokenizer.json` (settings and measurements)."""
    invalid = InvalidRecords(skip=skip_invalid)
    texts = training_text(config, Path(raw_dir), invalid)
    start = time.perf_counter()
    tokenizer = Tokenizer.train(
        [doc for docs in texts.values() for doc in docs], None, config.vocab_size, config.model_type, seed=config.seed
    )
    seconds = time.perf_counter() - start
    path = tokenizer.save(out_dir)
    report = {
        "config": to_dict(config),
        "sha256": tokenizer.sha256(),
        "vocab_size": tokenizer.vocab_size,
        "training_chars": {name: sum(len(doc) for doc in docs) for name, docs in texts.items()},
        "training_seconds": round(seconds, 2),
        "val_tokens_per_char": tokens_per_char(tokenizer, Path(raw_dir), invalid),
        "invalid_skipped": invalid.as_rows(),
    }
    path.with_name("tokenizer.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return tokenizer, report
