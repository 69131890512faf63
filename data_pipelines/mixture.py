"""The fine-tuning mixture: `seq2seq data build --config configs/data/mixture-default.yaml`.

1. Each source of the config runs its builder (`data_pipelines.builders`), which reads raw files and returns
   candidate examples with their split. Builder outputs are cached as `datasets` Arrow tables under
   `<data-dir>/cache/mixture/`, keyed by the builder's settings, the sha256 of the raw files it reads and the
   code of `data_pipelines`: a second run loads them instead of rebuilding.
2. No leakage: a val or test candidate whose content (the source text of its prompt or open response, see
   `builders.context`) also feeds a train candidate of any source is dropped; so is a test candidate whose
   content is in val. `find_leaks` checks the written files on prompts and responses.
3. Per source, the train split keeps at most `cap` examples (a seeded sample) and then takes `weight` copies
   of them (0.5 keeps half, 2 repeats each twice): train count = round(weight * min(cap, available)), which
   is T5's examples-proportional mixing with an artificial limit. val and test keep at most `eval_cap` each.
4. Writes `<out>/{train,val,test}.jsonl` (shuffled, seeded) and `<out>/summary.json`, and prints the summary:
   counts per source, task, label and split, what was dropped and why, and length percentiles in tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.builders import BUILDERS, BuildContext
from data_pipelines.presets import load_preset
from data_pipelines.schema import FIELDS, validate_example
from data_pipelines.sources import RAW_SOURCES
from data_pipelines.splits import SPLITS, norm
from seq2seq.config import to_dict
from seq2seq.files import sha256_file
from seq2seq.records import InvalidRecords, read_jsonl
from seq2seq.tasks import CLOSED_RESPONSE_TASKS, LABELS
from seq2seq.tokenizer import Tokenizer

CACHE_VERSION = 1
PACKAGE_DIR = Path(__file__).parent


@dataclass
class MixtureSource:
    builder: str  # a name in data_pipelines.builders.BUILDERS
    cap: int | None = None  # most distinct train examples (None: all)
    eval_cap: int | None = None  # most val examples, and most test examples (None: all)
    weight: float = 1.0  # copies of each kept train example; fractions keep a seeded subset
    path: str | None = None  # builder `jsonl`: the file of examples
    source: str | None = None  # builder `jsonl`: the `source` field of examples that have none


@dataclass
class MixtureConfig:
    name: str = "default"  # output goes to <data-dir>/mixture/<name>/
    seed: int = 1234
    max_chars: int = 500  # longest prompt or response in characters; longer candidates are dropped
    sources: list[MixtureSource] = field(default_factory=list)


def load_mixture_config(path: str | Path, overrides: list[str] = ()) -> MixtureConfig:
    config = load_preset(MixtureConfig, path, overrides)
    check_mixture_config(config, str(path))
    return config


def check_mixture_config(config: MixtureConfig, where: str) -> None:
    """Raise ValueError naming `where` (the config file) and the key of the first bad value."""
    if not config.sources:
        raise ValueError(f"{where}: `sources` is empty")
    if config.max_chars < 1:
        raise ValueError(f"{where}: max_chars must be at least 1, got {config.max_chars}")
    for i, source in enumerate(config.sources):
        if source.builder not in BUILDERS:
            raise ValueError(f"{where}: sources[{i}].builder {source.builder!r} is not one of {', '.join(BUILDERS)}")
        if not (source.weight >= 0 and math.isfinite(source.weight)):
            raise ValueError(f"{where}: sources[{i}].weight must be a number >= 0, got {source.weight!r}")
        for name in ("cap", "eval_cap"):
            value = getattr(source, name)
            if value is not None and value < 0:
                raise ValueError(f"{where}: sources[{i}].{name} must not be negative, got {value}")


def build_mixture(
    config: MixtureConfig,
    raw_dir: Path,
    out_dir: Path,
    tokenizer: Tokenizer | None = None,
    cache_dir: Path | None = None,
    skip_invalid: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the mixture into `out_dir` and return its summary (also written to `out_dir/summary.json`).
    With a `cache_dir`, builder outputs are cached there, and a build whose config, inputs, code and tokenizer
    match the one already in `out_dir` returns at once."""
    check_mixture_config(config, f"mixture {config.name!r}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    contexts = [
        BuildContext(
            raw_dir=raw_dir,
            seed=config.seed,
            max_chars=config.max_chars,
            invalid=InvalidRecords(skip_invalid),
            path=Path(source.path) if source.path else None,
            source=source.source,
        )
        for source in config.sources
    ]
    keys = [_cache_key(source, ctx) for source, ctx in zip(config.sources, contexts, strict=True)]
    settings = {"sources": keys, "config": to_dict(config), "tokenizer": tokenizer.sha256() if tokenizer else None}
    build_key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if cache_dir is not None and _up_to_date(out_dir, build_key):
        log(f"  {out_dir} is up to date (same config, inputs, code and tokenizer)")
        return json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))

    invalid = InvalidRecords(skip=skip_invalid)
    candidates, dropped = [], []
    for source, ctx, key in zip(config.sources, contexts, keys, strict=True):
        rows, stats, cached = _build_cached(source, ctx, key, cache_dir)
        invalid.merge_rows(stats["invalid"])
        candidates.append(rows)
        dropped.append(Counter(stats["dropped"]))
        log(f"  {source.builder:24s} {len(rows):7,d} candidates{' (cached)' if cached else ''}")

    _remove_leaks(candidates, dropped)
    splits: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for i, (source, rows) in enumerate(zip(config.sources, candidates, strict=True)):
        for split, chosen in _select(source, rows, np.random.default_rng([config.seed, i])).items():
            splits[split].extend(chosen)
    for n, split in enumerate(SPLITS):
        order = np.random.default_rng([config.seed, 1000 + n]).permutation(len(splits[split]))
        splits[split] = [{name: splits[split][k][name] for name in FIELDS} for k in order]
    leaks = find_leaks(example for split in SPLITS for example in splits[split])
    if leaks:
        raise RuntimeError(f"leakage check failed after de-duplication (a bug): {leaks[:3]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)  # written last: its presence marks a complete build
    for split in SPLITS:
        with (out_dir / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for example in splits[split]:
                f.write(json.dumps(example, ensure_ascii=False) + "\n")
    summary = summarize(config, splits, dropped, invalid, tokenizer)
    summary["build_key"] = build_key
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def load_mixture(directory: str | Path, split: str) -> list[dict[str, Any]]:
    """The examples of one split of a built mixture, each checked against the schema (a bad line is an
    error naming the file and line)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(directory) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; build it with `seq2seq data build --config <mixture config>`")
    invalid = InvalidRecords(skip=False)
    return [validate_example(record, path, number, invalid) for number, record in read_jsonl(path, invalid)]


def find_leaks(examples: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(id, field, text) of every val/test example whose prompt, or open response (not a label word or a
    speaker name), equals a train prompt or open response after `norm`. Empty when there is no leakage."""
    examples = list(examples)
    seen_in_train = set()
    for example in examples:
        if example["split"] == "train":
            seen_in_train.add(norm(example["prompt"]))
            if example["task"] not in CLOSED_RESPONSE_TASKS:
                seen_in_train.add(norm(example["response"]))
    leaks = []
    for example in examples:
        if example["split"] == "train":
            continue
        fields = ["prompt"] if example["task"] in CLOSED_RESPONSE_TASKS else ["prompt", "response"]
        leaks.extend((example["id"], name, example[name]) for name in fields if norm(example[name]) in seen_in_train)
    return leaks


# ---- steps ----


def _up_to_date(out_dir: Path, build_key: str) -> bool:
    summary = out_dir / "summary.json"
    if not summary.is_file() or not all((out_dir / f"{split}.jsonl").is_file() for split in SPLITS):
        return False
    return json.loads(summary.read_text(encoding="utf-8")).get("build_key") == build_key


def _build_cached(
    source: MixtureSource, ctx: BuildContext, key: str, cache_dir: Path | None
) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    """Candidates and stats ({"dropped": {...}, "invalid": [...]}) of one source; from the cache if present."""
    builder = BUILDERS[source.builder]
    if cache_dir is None:
        return builder.run(ctx), {"dropped": dict(ctx.dropped), "invalid": ctx.invalid.as_rows()}, False
    import datasets  # slow to import; only needed with a cache

    datasets.disable_progress_bars()
    entry = Path(cache_dir) / f"{source.builder}-{key[:16]}"
    if (entry / "stats.json").is_file():
        rows = datasets.load_from_disk(str(entry / "rows")).to_list() if (entry / "rows").is_dir() else []
        return rows, json.loads((entry / "stats.json").read_text(encoding="utf-8")), True
    rows = builder.run(ctx)
    stats = {"dropped": dict(ctx.dropped), "invalid": ctx.invalid.as_rows(), "code": _code_hash()}
    _remove_stale(Path(cache_dir))
    staging = entry.with_name(entry.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    features = datasets.Features(
        {
            **{name: datasets.Value("string") for name in FIELDS if name != "labels"},
            "labels": {name: datasets.Value("bool") for name in LABELS},
            "content": datasets.Sequence(datasets.Value("string")),
        }
    )
    staging.mkdir(parents=True)
    if rows:  # `datasets` cannot read back a table without rows: no candidates, no table
        datasets.Dataset.from_list(rows, features=features).save_to_disk(str(staging / "rows"))
    (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(entry, ignore_errors=True)
    staging.rename(entry)
    return rows, stats, False


def _remove_stale(cache_dir: Path) -> None:
    """Delete cache entries written by other versions of this code: they can never be used again."""
    for stats in cache_dir.glob("*/stats.json"):
        if json.loads(stats.read_text(encoding="utf-8")).get("code") != _code_hash():
            shutil.rmtree(stats.parent, ignore_errors=True)


def _cache_key(source: MixtureSource, ctx: BuildContext) -> str:
    """Everything a builder's output depends on: its settings, its input files, and this package's code."""
    builder = BUILDERS[source.builder]
    inputs = {
        relative: sha256_file(ctx.raw_dir / relative)
        for name in builder.raw_sources
        for relative in RAW_SOURCES[name].files
        if (ctx.raw_dir / relative).is_file()  # a missing file is the builder's error to report
    }
    if ctx.path is not None:
        inputs[str(ctx.path)] = sha256_file(ctx.path) if ctx.path.is_file() else "missing"
    settings = {
        "version": CACHE_VERSION,
        "builder": source.builder,
        "source": source.source,
        "seed": ctx.seed,
        "max_chars": ctx.max_chars,
        "skip_invalid": ctx.invalid.skip,
        "inputs": inputs,
        "code": _code_hash(),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


@lru_cache(maxsize=1)
def _code_hash() -> str:
    """Hash of this package's code and word list: a change to any builder invalidates the cache."""
    code = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in (".py", ".txt"):
            code.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return code.hexdigest()


def _remove_leaks(candidates: list[list[dict[str, Any]]], dropped: list[Counter[str]]) -> None:
    """Drop val candidates whose content is also in train, and test candidates whose content is in train
    or val (across all sources), counting them per source."""
    seen: set[str] = set()
    for split in SPLITS:
        for rows, counts in zip(candidates, dropped, strict=True):
            kept = []
            for row in rows:
                if row["split"] != split:
                    kept.append(row)
                elif split != "train" and any(norm(text) in seen for text in row["content"]):
                    counts[f"{split} content also in an earlier split"] += 1
                else:
                    kept.append(row)
            rows[:] = kept
        for rows in candidates:
            seen.update(norm(text) for row in rows if row["split"] == split for text in row["content"])


def _select(source: MixtureSource, rows: list[dict[str, Any]], rng: np.random.Generator) -> dict[str, list]:
    chosen: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        pool = [row for row in rows if row["split"] == split]
        cap = source.cap if split == "train" else source.eval_cap
        n = len(pool) if cap is None else min(cap, len(pool))
        sample = [pool[k] for k in sorted(rng.choice(len(pool), size=n, replace=False))]
        chosen[split] = _weighted(sample, source.weight, rng) if split == "train" else sample
    return chosen


def _weighted(sample: list[dict[str, Any]], weight: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    """round(weight * len(sample)) examples: whole copies, then a seeded subset; repeated ids get `#2`, `#3`..."""
    total = round(weight * len(sample))
    copies, rest = divmod(total, len(sample)) if sample else (0, 0)
    out = [dict(row, id=row["id"] if c == 0 else f"{row['id']}#{c + 1}") for c in range(copies) for row in sample]
    extra = sorted(rng.choice(len(sample), size=rest, replace=False)) if rest else []
    out += [dict(sample[k], id=sample[k]["id"] if copies == 0 else f"{sample[k]['id']}#{copies + 1}") for k in extra]
    return out


# ---- summary ----


def summarize(
    config: MixtureConfig,
    splits: dict[str, list[dict[str, Any]]],
    dropped: list[Counter[str]],
    invalid: InvalidRecords,
    tokenizer: Tokenizer | None,
) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    labels: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for split, examples in splits.items():
        for example in examples:
            counts[f"{example['source']} / {example['task']}"][split] += 1
            for name in LABELS:
                value = example["labels"][name]
                if value is not None:
                    labels[f"{example['task']} / {name}={str(value).lower()}"][split] += 1
    summary: dict[str, Any] = {
        "name": config.name,
        "config": to_dict(config),
        "examples": {split: len(examples) for split, examples in splits.items()},
        "counts": dict(sorted(counts.items())),
        "labels": dict(sorted(labels.items())),
        "dropped": {
            source.builder + (f" ({source.path})" if source.path else ""): dict(sorted(counts_.items()))
            for source, counts_ in zip(config.sources, dropped, strict=True)
            if counts_
        },
        "invalid_skipped": invalid.as_rows(),
    }
    if tokenizer is not None:
        summary["tokenizer_sha256"] = tokenizer.sha256()
        summary["lengths_in_tokens"] = _length_percentiles(splits, tokenizer)
    return summary


def _length_percentiles(splits: dict[str, list[dict[str, Any]]], tokenizer: Tokenizer) -> dict[str, Any]:
    by_task: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"prompt": [], "response": []})
    for examples in splits.values():
        for name in ("prompt", "response"):
            lengths = [len(ids) for ids in tokenizer.encode_batch([e[name] for e in examples])]
            for example, length in zip(examples, lengths, strict=True):
                by_task[example["task"]][name].append(length)
                by_task["(all)"][name].append(length)
    return {
        task: {
            name: dict(zip(("p50", "p90", "p99", "max"), _percentiles(values), strict=True))
            for name, values in fields.items()
        }
        for task, fields in sorted(by_task.items())
    }


def _percentiles(values: list[int]) -> list[int]:
    if not values:
        return [0, 0, 0, 0]
    return [int(math.ceil(np.percentile(values, q))) for q in (50, 90, 99)] + [max(values)]


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the plain-text tables `seq2seq data build` prints."""
    lines = [f"mixture {summary['name']!r}: " + ", ".join(f"{s} {n:,}" for s, n in summary["examples"].items())]
    lines.append(f"\n{'source / task':40s} {'train':>7s} {'val':>6s} {'test':>6s}")
    for key, row in summary["counts"].items():
        lines.append(f"{key:40s} {row['train']:7,d} {row['val']:6,d} {row['test']:6,d}")
    lines.append(f"\n{'labels (task / label=value)':40s} {'train':>7s} {'val':>6s} {'test':>6s}")
    for key, row in summary["labels"].items():
        lines.append(f"{key:40s} {row['train']:7,d} {row['val']:6,d} {row['test']:6,d}")
    lines.append("\ndropped on purpose (candidates, before caps):")
    for builder, reasons in summary["dropped"].items():
        lines.append(f"  {builder}: " + "; ".join(f"{reason} {n:,}" for reason, n in reasons.items()))
    skipped = summary["invalid_skipped"]
    lines.append(f"\ninvalid records skipped: {sum(row['count'] for row in skipped):,}")
    lines.extend(f"  {row['file']}: {row['reason']} x{row['count']}" for row in skipped)
    if "lengths_in_tokens" in summary:
        lines.append(f"\n{'length in tokens (p50/p90/p99/max)':40s} {'prompt':>18s} {'response':>18s}")
        for task, fields in summary["lengths_in_tokens"].items():
            cells = ["/".join(str(v) for v in fields[name].values()) for name in ("prompt", "response")]
            lines.append(f"{task:40s} {cells[0]:>18s} {cells[1]:>18s}")
    return "\n".join(lines)
