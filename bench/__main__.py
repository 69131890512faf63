"""Every side-by-side benchmark in one run, into one JSON under bench/results/ (`make bench`).

    python -m bench [--quick] [--only NAME[,NAME]] [--results-dir DIR] [--threads N]
                    [--model runs/finetune/final] [--mixture data/mixture/default]

First this machine's GEMM peak (a 2048 x 2048 matrix product in fp32 and bf16 with the run's threads), then, in
order (`--only` picks some):

- train: training throughput and MFU against BART, fp32 and bf16 autocast (bench/bench_train.py);
- generate: greedy decoding against BART at batch 1 and 8, cached, compiled and uncached, and time to first token
  (bench/bench_generate.py);
- serve: `seq2seq serve` under load against BART behind FastAPI (bench/bench_serve.py, run as its own process);
- pretrain: val nats/char of `shakespeare-cpu` after 2.5, 5 and 10 minutes against nanoGPT's CPU curve
  (bench/bench_pretrain.py; needs data/corpus/shakespeare);
- classify: the fine-tuned classifiers against TF-IDF + logistic regression (bench/bench_classify.py; needs a
  fine-tuned checkpoint and a built mixture).

A benchmark whose inputs are missing is recorded as skipped, with the reason; one that fails is recorded with its
error and the others still run (exit status 1). `--quick` runs each briefly at tiny sizes (a smoke test, about a
minute on 2 cores; no compiled decoding, whose compiling alone takes that long): its JSON is named `...-quick.json`
and `python -m bench.docs` refuses it. Timings need a quiet machine: on a shared one they measure the neighbours.
The full run takes about half an hour on 2 cores (pretraining alone, 11 minutes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from bench import bench_classify, bench_generate, bench_pretrain, bench_train, serving
from bench.machine import measure_peak
from bench.record import RESULTS, Skip, failed, run_benchmark, start, write

BENCHMARKS = ("train", "generate", "serve", "pretrain", "classify")
CORPUS, TOKENIZER = Path("data/corpus/shakespeare"), Path("data/tokenizer/tokenizer.model")


def pretrain(quick: bool) -> dict:
    for path, command in ((TOKENIZER, "seq2seq data tokenizer"),
                          (CORPUS / "meta.json", "seq2seq data corpus --config configs/data/corpus-shakespeare.yaml")):
        if not (bench_pretrain.REPO / path).exists():
            raise Skip(f"no {path} (build it with `{command}`)")
    if quick:
        quick_run = bench_pretrain.QUICK
        return bench_pretrain.run(quick_run["config"], "runs/bench-pretrain-quick", quick_run["overrides"],
                                  quick_run["eval_at_minutes"], quick_run["stop_at_minutes"])
    return bench_pretrain.run()


def classify(model: str, mixture: str, quick: bool) -> dict:
    why = bench_classify.missing_inputs(model, mixture)
    if why:
        raise Skip(why)
    return bench_classify.run(model, mixture, limit=50 if quick else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark briefly, at tiny sizes (smoke test)")
    parser.add_argument("--only", help=f"comma-separated, of {','.join(BENCHMARKS)}")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the JSON goes (default bench/results)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--model", default="runs/finetune/final", help="the fine-tuned checkpoint for classify")
    parser.add_argument("--mixture", default="data/mixture/default", help="the built mixture for classify")
    args = parser.parse_args(argv)
    names = BENCHMARKS if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        parser.error(f"--only: unknown {', '.join(unknown) or 'nothing'}; choose from {', '.join(BENCHMARKS)}")
    torch.set_num_threads(args.threads)
    quick = args.quick
    record = start("cpu", quick, ["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    print(f"{record['machine']['cpu']}, {args.threads} threads, torch {torch.__version__}, commit "
          f"{record['git']['commit']}" + (" (--quick: smoke test, not results)" if quick else ""), flush=True)
    record["gemm_peak"] = peak = measure_peak("cpu", quick)
    print("GEMM peak: " + ", ".join(f"{p} {peak[p]['gflops']['median']:.0f} GFLOP/s" for p in ("fp32", "bf16")),
          flush=True)
    steps = {
        "train": (lambda: bench_train.run(steps=3, warmup=1, dims="quick", batch=4, src_len=32, tgt_len=32, peak=peak)
                  if quick else bench_train.run(steps=10, peak=peak), bench_train.report),
        "generate": (lambda: bench_generate.run((1, 8), repeats=2, modes=("cache",), dims="quick", src_len=16,
                                                new_tokens=16)
                     if quick else bench_generate.run((1, 8)), bench_generate.report),
        "serve": (lambda: serving.run(quick), None),
        "pretrain": (lambda: pretrain(quick), bench_pretrain.report),
        "classify": (lambda: classify(args.model, args.mixture, quick), bench_classify.report),
    }
    for name in names:
        benchmark, report = steps[name]
        run_benchmark(record, name, benchmark, report)
    path = write(record, args.results_dir)
    print(f"\nwrote {path}")
    if failed(record):
        print(f"failed: {', '.join(failed(record))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
