"""Pretraining corpora: `seq2seq data corpus --config configs/data/corpus-<name>.yaml`.

A corpus is a weighted mix of sources, tokenized into two flat token arrays, `train.bin` and `val.bin`
(uint16 when the vocabulary fits, else uint32; read them with `load_corpus` as memory maps), and
`meta.json`, which holds the token and character counts of each split so that a loss in nats per token
converts to nats per character: nats/char = nats/token * tokens / chars.

- Documents are joined by the eos token (`separator: eos`, the default), so a training window that crosses
  from one document into the next sees an explicit boundary and Shakespeare's own blank lines keep their
  meaning. eos decodes to nothing, so character counts are those of the documents. `separator: blank_line`
  joins them with "\\n\\n" instead.
- Weights: a source of weight w contributes floor(w) copies of its train documents plus a seeded sample of
  the fraction left over (for a single-document source, that fraction of its characters, from the start).
  Train documents of all sources are then shuffled together (seeded).
- val.bin holds the val documents of the sources marked `val: true`. For Tiny Shakespeare that is exactly
  text[1003854:], tokenized as one string (111,540 characters), so val numbers compare with nanoGPT's.
- Joke and sarcasm texts pass the offensive-content filter; only training splits go into train.bin.
"""

from __future__ import annotations

import glob
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data_pipelines.offensive import default_filter
from data_pipelines.presets import load_preset
from data_pipelines.readers import (
    read_dailydialog,
    read_humor_colbert,
    read_jokes_qa,
    read_sarcasm_headlines,
    read_tinyshakespeare,
)
from data_pipelines.splits import SHAKESPEARE_VAL_START
from seq2seq.config import to_dict
from seq2seq.records import InvalidRecords, read_text
from seq2seq.tokenizer import Tokenizer

SourceKind = Literal[
    "tinyshakespeare", "dailydialog", "jokes_qa", "humor_colbert", "sarcasm_headlines", "text_files", "hf_dataset"
]


@dataclass
class CorpusSource:
    kind: SourceKind
    name: str | None = None  # how meta.json names it (default: kind)
    weight: float = 1.0
    val: bool = False  # put this source's val split into val.bin
    paths: list[str] = field(default_factory=list)  # text_files: files or glob patterns
    val_fraction: float = 0.1  # text_files: the last fraction of each file's characters is its val split
    hf_path: str | None = None  # hf_dataset: first argument of datasets.load_dataset ("text", "json", a hub name)
    hf_config: str | None = None  # hf_dataset: its configuration name, if any
    data_files: dict[str, str] | None = None  # hf_dataset: split -> local file(s), for "text"/"json"/"csv"
    text_field: str = "text"  # hf_dataset: the column holding the text
    train_split: str = "train"  # hf_dataset
    val_split: str | None = None  # hf_dataset: None means no val documents


@dataclass
class CorpusConfig:
    name: str  # output goes to <data-dir>/corpus/<name>/
    sources: list[CorpusSource] = field(default_factory=list)
    separator: Literal["eos", "blank_line"] = "eos"
    seed: int = 1234


def load_corpus_config(path: str | Path, overrides: list[str] = ()) -> CorpusConfig:
    config = load_preset(CorpusConfig, path, overrides)
    if not config.sources:
        raise ValueError(f"{path}: `sources` is empty")
    for i, source in enumerate(config.sources):
        if source.weight < 0:
            raise ValueError(f"{path}: sources[{i}].weight must not be negative")
        if source.kind == "text_files" and not source.paths:
            raise ValueError(f"{path}: sources[{i}] (text_files) needs `paths`")
        if source.kind == "hf_dataset" and not source.hf_path:
            raise ValueError(f"{path}: sources[{i}] (hf_dataset) needs `hf_path`")
    if not any(source.val for source in config.sources):
        raise ValueError(f"{path}: no source has `val: true`, so there would be no val split")
    return config


def documents(
    source: CorpusSource, split: str, raw_dir: Path, invalid: InvalidRecords, dropped: Counter[str]
) -> list[str]:
    """The texts of one split ("train" or "val") of a source. Joke and sarcasm texts that the offensive
    filter flags are left out (and counted in `dropped`)."""
    kind = source.kind
    if kind == "tinyshakespeare":
        text = read_tinyshakespeare(raw_dir, invalid)
        return [text[:SHAKESPEARE_VAL_START] if split == "train" else text[SHAKESPEARE_VAL_START:]]
    if kind == "dailydialog":
        return ["\n".join(d.turns) for d in read_dailydialog(raw_dir, invalid, dropped) if d.split == split]
    if kind == "jokes_qa":
        texts = [joke.text for joke in read_jokes_qa(raw_dir, invalid, dropped) if joke.split == split]
        return _inoffensive(texts, dropped)
    if kind == "humor_colbert":
        return _inoffensive(
            [item.text for item in read_humor_colbert(raw_dir, invalid) if item.split == split], dropped
        )
    if kind == "sarcasm_headlines":
        items = read_sarcasm_headlines(raw_dir, invalid)
        return _inoffensive([item.text for item in items if item.split == split], dropped)
    if kind == "text_files":
        return _text_file_documents(source, split, invalid)
    if kind == "hf_dataset":
        return _hf_documents(source, split)
    raise ValueError(f"unknown source kind {kind!r}")


def _inoffensive(texts: list[str], dropped: Counter[str]) -> list[str]:
    flagged = default_filter().is_offensive
    kept = [text for text in texts if not flagged(text)]
    dropped["offensive (word list)"] += len(texts) - len(kept)
    return kept


def _text_file_documents(source: CorpusSource, split: str, invalid: InvalidRecords) -> list[str]:
    paths: list[Path] = []
    for pattern in source.paths:
        matches = [Path(p) for p in sorted(glob.glob(pattern))] if any(c in pattern for c in "*?[") else [Path(pattern)]
        if not matches or not all(path.is_file() for path in matches):
            raise FileNotFoundError(f"text_files: {pattern} matches no file")
        paths.extend(matches)
    out = []
    for path in paths:
        text = read_text(path, invalid)
        cut = int(len(text) * (1 - source.val_fraction))
        out.append(text[:cut] if split == "train" else text[cut:])
    return [text for text in out if text]


def _hf_documents(source: CorpusSource, split: str) -> list[str]:
    import datasets  # slow to import; only needed here

    split_name = source.train_split if split == "train" else source.val_split
    if split_name is None:
        return []
    try:
        dataset = datasets.load_dataset(
            source.hf_path, source.hf_config, data_files=source.data_files, split=split_name
        )
    except FileNotFoundError as error:
        raise FileNotFoundError(f"hf_dataset {source.hf_path!r}: {error}") from None
    if source.text_field not in dataset.column_names:
        raise ValueError(
            f"hf_dataset {source.hf_path!r}: no column {source.text_field!r} (columns: {dataset.column_names})"
        )
    return [text for text in dataset[source.text_field] if isinstance(text, str) and text]


# ---- building the arrays ----


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def prepare_corpus(
    config: CorpusConfig,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    raw_dir: str | Path = Path("data/raw"),
    skip_invalid: bool = False,
    command: str | None = None,
) -> Path:
    """Tokenize the corpus into `out_dir/{train.bin,val.bin,meta.json}` and return `out_dir`."""
    out_dir, raw_dir = Path(out_dir), Path(raw_dir)
    rng = np.random.default_rng(config.seed)
    invalid = InvalidRecords(skip=skip_invalid)
    separator = [tokenizer.eos_id] if config.separator == "eos" else tokenizer.encode("\n\n")
    char_lengths = tokenizer.char_lengths()
    train_docs: list[np.ndarray] = []
    val_docs: list[np.ndarray] = []
    sources_meta = []
    for source in config.sources:
        dropped: Counter[str] = Counter()
        train = _encode(tokenizer, _weighted(documents(source, "train", raw_dir, invalid, dropped), source.weight, rng))
        val = _encode(tokenizer, documents(source, "val", raw_dir, invalid, dropped)) if source.val else []
        train_docs.extend(train)
        val_docs.extend(val)
        sources_meta.append(
            {
                "name": source.name or source.kind,
                "kind": source.kind,
                "weight": source.weight,
                "train": _counts(train, char_lengths),
                "val": _counts(val, char_lengths),
                "dropped": dict(dropped),
            }
        )
    order = rng.permutation(len(train_docs))
    dtype = token_dtype(tokenizer.vocab_size)
    arrays = {
        "train": _join([train_docs[k] for k in order], separator, dtype),
        "val": _join(val_docs, separator, dtype),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "name": config.name,
        "command": command or f"seq2seq data corpus --config configs/data/corpus-{config.name}.yaml",
        "tokenizer_sha256": tokenizer.sha256(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "separator": config.separator,
        "separator_ids": separator,
    }
    for split, array in arrays.items():
        if len(array) == 0:
            raise ValueError(f"corpus {config.name!r}: the {split} split is empty")
        array.tofile(out_dir / f"{split}.bin")
        chars = int(char_lengths[array].sum())
        documents_count = len(train_docs) if split == "train" else len(val_docs)
        meta[split] = {
            "tokens": int(len(array)),
            "chars": chars,
            "documents": documents_count,
            "tokens_per_char": round(len(array) / chars, 5),
        }
    meta["sources"] = sources_meta
    meta["invalid_skipped"] = invalid.as_rows()
    meta["config"] = to_dict(config)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _weighted(docs: list[str], weight: float, rng: np.random.Generator) -> list[str]:
    copies, fraction = divmod(weight, 1.0)
    out = docs * int(copies)
    if fraction > 0 and docs:
        if len(docs) == 1:
            out.append(docs[0][: int(len(docs[0]) * fraction)])
        else:
            picked = rng.choice(len(docs), size=round(len(docs) * fraction), replace=False)
            out.extend(docs[k] for k in sorted(picked))
    return [doc for doc in out if doc]


def _encode(tokenizer: Tokenizer, docs: list[str], batch: int = 4096) -> list[np.ndarray]:
    out = []
    for start in range(0, len(docs), batch):
        out.extend(np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch(docs[start : start + batch]))
    return out


def _counts(docs: list[np.ndarray], char_lengths: np.ndarray) -> dict[str, int]:
    return {
        "documents": len(docs),
        "tokens": int(sum(len(d) for d in docs)),
        "chars": int(sum(int(char_lengths[d].sum()) for d in docs)),
    }


def _join(docs: list[np.ndarray], separator: list[int], dtype: np.dtype) -> np.ndarray:
    if not docs:
        return np.zeros(0, dtype=dtype)
    parts = [docs[0]]
    for doc in docs[1:]:
        parts.append(np.asarray(separator, dtype=np.int64))
        parts.append(doc)
    return np.concatenate(parts).astype(dtype)


# ---- reading ----


@dataclass
class Corpus:
    """Token arrays of a prepared corpus, memory-mapped, and its metadata."""

    path: Path
    train: np.memmap
    val: np.memmap
    meta: dict[str, Any]

    def tokens_per_char(self, split: str) -> float:
        return self.meta[split]["tokens"] / self.meta[split]["chars"]

    def nats_per_char(self, nats_per_token: float, split: str) -> float:
        """Convert a mean loss over the split's tokens to nats per character of its text."""
        return nats_per_token * self.tokens_per_char(split)


def load_corpus(directory: str | Path, tokenizer: Tokenizer | str | None = None) -> Corpus:
    """Open `directory` (written by `prepare_corpus`). With `tokenizer` (or its sha256), check that the arrays
    were made with it: a stale corpus is a ValueError that gives the command that rebuilds it."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} not found; build it with `seq2seq data corpus --config configs/data/corpus-<name>.yaml`"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if tokenizer is not None:
        expected = tokenizer if isinstance(tokenizer, str) else tokenizer.sha256()
        if meta["tokenizer_sha256"] != expected:
            raise ValueError(
                f"{directory} is stale: it was tokenized with tokenizer {meta['tokenizer_sha256'][:12]}, "
                f"not the one in use ({expected[:12]}); rebuild it with `{meta['command']}`"
            )
    arrays = {}
    for split in ("train", "val"):
        path = directory / f"{split}.bin"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; rebuild the corpus with `{meta['command']}`")
        arrays[split] = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
        if len(arrays[split]) != meta[split]["tokens"]:
            raise ValueError(
                f"{path}: {len(arrays[split])} tokens, meta.json says {meta[split]['tokens']}; "
                f"rebuild with `{meta['command']}`"
            )
    return Corpus(directory, arrays["train"], arrays["val"], meta)
