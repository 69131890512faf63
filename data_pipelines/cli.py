"""`seq2seq data ...`: fetch raw data, train the tokenizer, build pretraining arrays and the fine-tuning mixture."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from data_pipelines.sources import RAW_SOURCES, fetch_from_directory, fetch_online, resolve_sources

PRESET_HELP = "YAML preset (default: %(default)s)"


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="data pipelines: fetch, tokenizer, corpus, build, prefs",
        description="Data pipelines. In order: `fetch` the raw datasets, train the `tokenizer`, tokenize a "
        "pretraining `corpus`, `build` the fine-tuning mixture. Everything goes under --data-dir (default data/).",
    )
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    fetch = commands.add_parser(
        "fetch",
        help="copy or download the raw datasets into <data-dir>/raw/",
        description="Fill <data-dir>/raw/ with the raw datasets, checking each file's sha256: from a local folder "
        "laid out like ../shared/data (--from), or, without --from, from each source's public URL (the held-out "
        f"sample is then removed as in SOURCE.md). Sources: {', '.join(RAW_SOURCES)}.",
    )
    fetch.add_argument("--from", dest="from_dir", type=Path, metavar="PATH", help="local folder to copy from")
    fetch.add_argument("--sources", nargs="+", metavar="NAME", help="only these sources (default: all)")
    _add_dirs(fetch, raw=True)
    fetch.set_defaults(run=run_fetch)

    tokenizer = commands.add_parser(
        "tokenizer",
        help="train the SentencePiece tokenizer on training splits",
        description="Train the SentencePiece tokenizer on the training splits of Tiny Shakespeare and the "
        "fine-tuning sources, save <out>/tokenizer.model and <out>/tokenizer.json, and report tokens per "
        "character on each source's val split.",
    )
    tokenizer.add_argument("--config", type=Path, help="YAML preset (default: the built-in defaults)")
    tokenizer.add_argument("--out", type=Path, help="output directory (default: <data-dir>/tokenizer)")
    _add_dirs(tokenizer, raw=True, skip_invalid=True)
    _add_overrides(tokenizer, "vocab_size=2048 model_type=unigram")
    tokenizer.set_defaults(run=run_tokenizer)

    corpus = commands.add_parser(
        "corpus",
        help="tokenize a pretraining corpus into train.bin / val.bin / meta.json",
        description="Tokenize a weighted mix of sources into memory-mappable token arrays "
        "<out>/train.bin and <out>/val.bin, with token and character counts in <out>/meta.json.",
    )
    corpus.add_argument("--config", type=Path, default=Path("configs/data/corpus-shakespeare.yaml"), help=PRESET_HELP)
    corpus.add_argument("--out", type=Path, help="output directory (default: <data-dir>/corpus/<name>)")
    corpus.add_argument(
        "--tokenizer", type=Path, help="tokenizer.model or its directory (default: <data-dir>/tokenizer)"
    )
    _add_dirs(corpus, raw=True, skip_invalid=True)
    _add_overrides(corpus, "separator=blank_line seed=7")
    corpus.set_defaults(run=run_corpus)

    build = commands.add_parser(
        "build",
        help="build the fine-tuning mixture (JSONL) and print its summary",
        description="Build the fine-tuning mixture: <out>/{train,val,test}.jsonl in one schema "
        '({"id", "source", "task", "prompt", "response", "labels": {"joke", "sarcasm"}, "split"}) and '
        "<out>/summary.json. Builder outputs are cached under <data-dir>/cache/, so a second run is fast.",
    )
    build.add_argument("--config", type=Path, default=Path("configs/data/mixture-default.yaml"), help=PRESET_HELP)
    build.add_argument("--out", type=Path, help="output directory (default: <data-dir>/mixture/<name>)")
    build.add_argument("--tokenizer", type=Path, help="for length percentiles (default: <data-dir>/tokenizer)")
    build.add_argument("--no-cache", action="store_true", help="rebuild every source instead of using the cache")
    _add_dirs(build, raw=True, skip_invalid=True)
    _add_overrides(build, "seed=7 max_chars=400")
    build.set_defaults(run=run_build)

    prefs = commands.add_parser(
        "prefs",
        help="the built-in preference set: the dataset's reply against the model's own",
        description="For the train split's chat prompts (plain and joke tone), pair the dataset's reply (chosen) "
        "with a fine-tuned checkpoint's greedy reply (rejected): <out>/pairs.jsonl for DPO and <out>/thumbs.jsonl "
        "for KTO, in the feedback schema (docs/preference.md).",
    )
    prefs.add_argument("--from", dest="checkpoint", required=True, metavar="DIR", help="a fine-tuned checkpoint")
    prefs.add_argument("--mixture", type=Path, help="mixture directory (default: <data-dir>/mixture/default)")
    prefs.add_argument("--out", type=Path, help="output directory (default: <data-dir>/prefs)")
    prefs.add_argument("--max-examples", type=int, default=2000, help="prompts at most (default: %(default)s)")
    prefs.add_argument("--seed", type=int, default=0)
    prefs.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    _add_dirs(prefs)
    prefs.set_defaults(run=run_prefs)


def _add_dirs(parser: argparse.ArgumentParser, raw: bool = False, skip_invalid: bool = False) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="data folder (default: data/)")
    if raw:
        parser.add_argument("--raw-dir", type=Path, help="raw datasets (default: <data-dir>/raw)")
    if skip_invalid:
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="skip malformed records (reporting how many and why) instead of stopping at the first one",
        )


def _add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {example}")


def _raw_dir(args: argparse.Namespace) -> Path:
    return args.raw_dir or args.data_dir / "raw"


def run_fetch(args: argparse.Namespace) -> int:
    sources = resolve_sources(args.sources)
    start = time.perf_counter()
    if args.from_dir is not None:
        fetch_from_directory(args.from_dir, _raw_dir(args), sources)
    else:
        fetch_online(_raw_dir(args), sources)
    print(f"fetched {len(sources)} source(s) into {_raw_dir(args)} in {time.perf_counter() - start:.1f}s")
    return 0


def run_tokenizer(args: argparse.Namespace) -> int:
    from data_pipelines.tokenizer_training import load_tokenizer_config, train_tokenizer

    config = load_tokenizer_config(args.config, args.overrides)
    out = args.out or args.data_dir / "tokenizer"
    start = time.perf_counter()
    tokenizer, report = train_tokenizer(config, _raw_dir(args), out, args.skip_invalid)
    print(f"tokenizer: {config.model_type}, vocab {tokenizer.vocab_size}, sha256 {report['sha256'][:12]}")
    print("trained on (characters): " + ", ".join(f"{k} {v:,}" for k, v in report["training_chars"].items()))
    print("tokens per character on val: " + ", ".join(f"{k} {v:.4f}" for k, v in report["val_tokens_per_char"].items()))
    _print_skipped(report["invalid_skipped"])
    print(f"wrote {out / 'tokenizer.model'} in {time.perf_counter() - start:.1f}s")
    return 0


def run_corpus(args: argparse.Namespace) -> int:
    from data_pipelines.corpus import load_corpus_config, prepare_corpus
    from seq2seq.tokenizer import Tokenizer

    config = load_corpus_config(args.config, args.overrides)
    tokenizer = Tokenizer.load(args.tokenizer or args.data_dir / "tokenizer")
    out = args.out or args.data_dir / "corpus" / config.name
    command = f"seq2seq data corpus --config {args.config}" + (
        f" --data-dir {args.data_dir}" if args.data_dir != Path("data") else ""
    )
    start = time.perf_counter()
    prepare_corpus(config, tokenizer, out, _raw_dir(args), args.skip_invalid, command)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    for split in ("train", "val"):
        counts = meta[split]
        print(
            f"{split:5s} {counts['tokens']:>11,d} tokens {counts['chars']:>12,d} chars "
            f"{counts['tokens_per_char']:.4f} tokens/char ({counts['documents']:,} documents, {meta['dtype']})"
        )
    for source in meta["sources"]:
        dropped = "; ".join(f"{k} {v:,}" for k, v in source["dropped"].items())
        print(
            f"  {source['name']:18s} weight {source['weight']:<4g} train {source['train']['chars']:>11,d} chars"
            + (f"  (dropped: {dropped})" if dropped else "")
        )
    _print_skipped(meta["invalid_skipped"])
    print(f"wrote {out}/{{train.bin,val.bin,meta.json}} in {time.perf_counter() - start:.1f}s")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from data_pipelines.mixture import build_mixture, format_summary, load_mixture_config
    from seq2seq.tokenizer import Tokenizer

    config = load_mixture_config(args.config, args.overrides)
    tokenizer = Tokenizer.load(args.tokenizer or args.data_dir / "tokenizer")
    out = args.out or args.data_dir / "mixture" / config.name
    cache = None if args.no_cache else args.data_dir / "cache" / "mixture"
    start = time.perf_counter()
    summary = build_mixture(config, _raw_dir(args), out, tokenizer, cache, args.skip_invalid)
    print(format_summary(summary))
    print(f"\nmixture in {out}/ ({{train,val,test}}.jsonl, summary.json), {time.perf_counter() - start:.1f}s")
    return 0


def run_prefs(args: argparse.Namespace) -> int:
    from data_pipelines.prefs import make_preferences
    from seq2seq.device import resolve_device

    make_preferences(args.checkpoint, args.mixture or args.data_dir / "mixture" / "default",
                     args.out or args.data_dir / "prefs", args.max_examples, args.seed,
                     device=resolve_device(args.device))
    return 0


def _print_skipped(rows: list[dict]) -> None:
    if rows:
        print(f"skipped {sum(row['count'] for row in rows):,} invalid record(s):")
        for row in rows:
            print(f"  {row['file']}: {row['reason']} x{row['count']}")
