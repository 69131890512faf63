"""The GPU benchmarks, in at most 8 minutes on one GPU, into one JSON under bench/results/ (run by bench/gpu.sh).

    python -m bench.gpu [--dry-run] [--data ../shared/data] [--results-dir DIR] [--budget-s 480]

In this order, each step recorded as it finishes (the JSON is rewritten after every step, so a run stopped early
keeps what it measured):

1. device: `nvidia-smi` and `torch.cuda.get_device_name`; the GPU's GEMM peak (8192 x 8192, fp32 and bf16);
2. train: training throughput and MFU against BART in bf16 at the benchmark dimensions and at the paper's base
   dimensions (configs/model/aiayn-base.yaml: d_model 512, 6+6 layers, ffn 2048), batch 64 x (128 + 128);
3. generate: greedy decoding against BART at batch 1 and 32, cached, and time to first token; then our compiled
   decoding in a child process given what the budget leaves after the later steps' share (Inductor's autotuning
   on a GPU can take minutes: past its share it is stopped and recorded as skipped);
4. pretrain: configs/pretrain/shakespeare-gpu.yaml on Tiny Shakespeare alone (`data.corpus=data/corpus/shakespeare`,
   so val nats/char compare with nanoGPT's published 1.4697 after ~3 minutes on an A100), evaluated on all of val
   after 1, 2 and 3 minutes of training and stopped by SIGINT after the third (its cosine schedule spans the
   config's 5,000 steps, not 3 minutes). Data it lacks it builds from `--data` (a copy of ../shared/data):
   `seq2seq data fetch --from`, `seq2seq data tokenizer`, `seq2seq data corpus`;
5. serve: bench/bench_serve.py at concurrency 64 (`--max-batch 64`, 64 requests per system), when it exists.

`--dry-run`: the same steps on the CPU at toy sizes (tiny models, a few steps, 6 seconds of pretraining, the
serving benchmark's `--quick`), in under 2 minutes, without compiled decoding; its JSON is named `...-quick.json`.
Nothing here downloads: transformers and datasets run offline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import bench_generate, bench_pretrain, bench_train, serving
from bench.machine import measure_peak
from bench.record import RESULTS, Skip, failed, run_benchmark, start, write

REPO = Path(__file__).resolve().parent.parent
CORPUS, TOKENIZER = Path("data/corpus/shakespeare"), Path("data/tokenizer/tokenizer.model")
# What the steps after generation need, held back from compiled decoding's share of the budget.
RESERVED_FOR_PRETRAIN_S, RESERVED_FOR_SERVE_S = 240, 100
TOY_PRETRAIN = ["model.d_model=64", "model.n_heads=4", "model.n_encoder_layers=1", "model.n_decoder_layers=1",
                "model.d_ff=128", "objective.src_len=32", "objective.tgt_len=32", "train.batch_size=8",
                "train.device=cpu", "train.eval_every=100000", "train.save_every=100000"]


def device_report(device: str) -> dict:
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        smi = f"nvidia-smi: {error}"
    name = torch.cuda.get_device_name() if device == "cuda" else None
    return {"device": device, "torch_device_name": name, "nvidia_smi": smi}


def train(device: str, peak: dict, dry_run: bool) -> dict:
    if dry_run:
        sizes = dict(steps=3, warmup=1, dims="quick", batch=4, src_len=32, tgt_len=32)
        return {dims: bench_train.run(("bf16",), device=device, peak=peak, **sizes) for dims in ("bench", "base")}
    return {dims: bench_train.run(("bf16",), steps=20, warmup=3, dims=dims, batch=64, device=device, peak=peak)
            for dims in ("bench", "base")}


def generate(device: str, dry_run: bool, seconds_left: float) -> dict:
    if dry_run:
        result = bench_generate.run((1, 32), repeats=2, modes=("cache",), dims="quick", src_len=16, new_tokens=16,
                                    device=device)
        result["compiled"] = {"status": "skipped", "reason": "skipped: --dry-run (compiling takes a minute on a CPU)"}
        return result
    result = bench_generate.run((1, 32), repeats=5, modes=("cache",), device=device)
    share = min(300.0, seconds_left - RESERVED_FOR_PRETRAIN_S - RESERVED_FOR_SERVE_S)
    if share < 60:
        result["compiled"] = {"status": "skipped", "reason": f"skipped: {seconds_left:.0f} s of the budget left, "
                              f"{RESERVED_FOR_PRETRAIN_S + RESERVED_FOR_SERVE_S} s held for pretraining and serving"}
        return result
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as work:
        out = Path(work) / "compiled.json"
        command = [sys.executable, "bench/bench_generate.py", "--device", device, "--batches", "1", "32",
                   "--only-compiled", "--json", str(out)]
        try:
            subprocess.run(command, cwd=REPO, timeout=share, check=True)
            result["compiled"] = {"status": "ok", **json.loads(out.read_text())}
        except subprocess.TimeoutExpired:
            result["compiled"] = {"status": "skipped", "reason": f"skipped: compiling and timing ran past its "
                                                                 f"{share:.0f} s share of the budget"}
        except subprocess.CalledProcessError as error:
            result["compiled"] = {"status": "error", "error": f"bench_generate.py exited with {error.returncode}"}
    return result


def generate_report(result: dict) -> str:
    compiled = result["compiled"]
    return bench_generate.report(result) + "\n\ncompiled: " + (
        "\n" + bench_generate.report(compiled) if compiled["status"] == "ok"
        else compiled.get("reason") or compiled.get("error"))


def build_data(data: Path) -> list[str]:
    """Build the Tiny Shakespeare corpus (and the tokenizer) that pretraining reads, where missing."""
    done = []
    seq2seq = [sys.executable, "-m", "seq2seq.cli", "data"]
    if not (REPO / TOKENIZER).exists():
        if not (data / "tinyshakespeare").is_dir():
            raise Skip(f"no {TOKENIZER} and no data to build it from at {data} (pass --data, a copy of "
                       f"../shared/data)")
        for command in (["fetch", "--from", str(data)], ["tokenizer"]):
            subprocess.run([*seq2seq, *command], cwd=REPO, check=True)
            done.append("seq2seq data " + " ".join(command))
    if not (REPO / CORPUS / "meta.json").exists():
        command = ["corpus", "--config", "configs/data/corpus-shakespeare.yaml"]
        subprocess.run([*seq2seq, *command], cwd=REPO, check=True)
        done.append("seq2seq data " + " ".join(command))
    return done


def pretrain(data: Path, dry_run: bool) -> dict:
    started = time.monotonic()
    built = build_data(data)
    data_s = time.monotonic() - started
    overrides = [f"data.corpus={CORPUS}", f"data.tokenizer={TOKENIZER}"]
    if dry_run:
        result = bench_pretrain.run("configs/pretrain/shakespeare-gpu.yaml", "runs/bench-pretrain-gpu-dry-run",
                                    [*overrides, *TOY_PRETRAIN], (0.1,), stop_at_minutes=0.1, timeout_s=90)
    else:
        result = bench_pretrain.run("configs/pretrain/shakespeare-gpu.yaml", "runs/bench-pretrain-gpu", overrides,
                                    (1, 2, 3), stop_at_minutes=3, timeout_s=300)
    return {"data_built": built, "data_s": data_s, **result}


def serve(device: str, dry_run: bool, seconds_left: float) -> dict:
    if dry_run:
        return serving.run(True, ["--device", device], timeout_s=90)
    return serving.run(False, ["--device", device, "--concurrency", "64", "--max-batch", "64", "--requests", "64",
                               "--threads", "4"], timeout_s=max(60.0, seconds_left - 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                        help="raw datasets to build the corpus from when data/ lacks it (default ../shared/data)")
    parser.add_argument("--results-dir", default=str(RESULTS))
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole run's wall-clock budget")
    args = parser.parse_args(argv)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"  # nothing downloads, here or in the processes started from here
    deadline = time.monotonic() + args.budget_s
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("bench.gpu: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    record = start("gpu", quick=args.dry_run, command=["bench/gpu.sh", *(argv if argv is not None else sys.argv[1:])])
    record["budget_s"] = args.budget_s
    path = None

    def step(name, benchmark, report=None) -> None:
        nonlocal path
        run_benchmark(record, name, benchmark, report)
        path = write(record, args.results_dir, path)

    step("device", lambda: device_report(device),
         lambda r: f"{r['nvidia_smi'].rstrip()}\ntorch: {r['torch_device_name']}")
    record["gemm_peak"] = peak = measure_peak(device, quick=args.dry_run)
    print("GEMM peak: " + ", ".join(f"{p} {peak[p]['gflops']['median']:.0f} GFLOP/s" for p in ("fp32", "bf16")))
    step("train", lambda: train(device, peak, args.dry_run),
         lambda r: "\n".join(bench_train.report(r[dims]) for dims in r))
    step("generate", lambda: generate(device, args.dry_run, deadline - time.monotonic()), generate_report)
    step("pretrain", lambda: pretrain(Path(args.data), args.dry_run), bench_pretrain.report)
    step("serve", lambda: serve(device, args.dry_run, deadline - time.monotonic()))
    print(f"\nwrote {path}")
    if failed(record):
        print(f"failed: {', '.join(failed(record))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

