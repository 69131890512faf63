"""Training throughput and MFU against transformers' BartForConditionalGeneration, side by side in one run.

    python bench/bench_train.py [--steps 10] [--precision fp32 bf16] [--dims bench|base] [--device cpu|cuda]
                                [--quick] [--json FILE]

Both models: vocab 8192, d_model 256, 4+4 layers, 4 heads, ffn 1024 (`--dims base`: the paper's base model, d_model
512, 8 heads, 6+6 layers, ffn 2048, at the same vocabulary), batch 32 x (128 source + 128 target tokens), AdamW,
random weights and tokens; tokens/s counts source + target tokens per optimizer step. MFU is tokens/s x training
FLOPs per token (bench/flops.py: 30.67 MFLOP at the default dimensions) over this machine's GEMM peak in the same
precision, measured in the same run (bench/machine.py). `--quick`: tiny dimensions and 3 steps, a smoke test.
Needs the `bench` extra (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flops import training_flops_per_token  # noqa: E402
from bench.machine import measure_peak  # noqa: E402
from bench.measure import ratios, spread, synchronizer, time_interleaved  # noqa: E402
from bench.models import DIMS, bart, our_config, ours  # noqa: E402

BATCH, SRC_LEN, TGT_LEN = 32, 128, 128


def train_step(model: torch.nn.Module, loss_fn, precision: str, device: torch.device):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run(precisions=("fp32", "bf16"), steps: int = 10, warmup: int = 2, dims: str = "bench", batch: int = BATCH,
        src_len: int = SRC_LEN, tgt_len: int = TGT_LEN, device: str = "cpu", peak: dict | None = None) -> dict:
    """Seconds per step, tokens/s and MFU of both systems in each precision, as medians with their spread over
    `steps` interleaved steps; `peak` is `bench.machine.measure_peak`'s result (no MFU without it)."""
    device = torch.device(device)
    flops = training_flops_per_token(our_config(dims), src_len, tgt_len)
    torch.manual_seed(0)
    src = torch.randint(4, DIMS[dims]["vocab_size"], (batch, src_len), device=device)
    tgt = torch.randint(4, DIMS[dims]["vocab_size"], (batch, tgt_len + 1), device=device)
    tgt_in, tgt_out = tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()
    tokens = batch * (src_len + tgt_len)
    result = {"settings": {"dims": dims, **DIMS[dims], "batch": batch, "src_len": src_len, "tgt_len": tgt_len,
                           "tokens_per_step": tokens, "steps": steps, "warmup": warmup, "device": str(device),
                           "threads": torch.get_num_threads(), "optimizer": "AdamW",
                           "timing": "steps of the two systems alternate; median over steps"},
              "flops": flops}
    for precision in precisions:
        torch.manual_seed(0)
        bart_model, our_model = bart(dims).to(device).train(), ours(dims).to(device).train()
        steps_of = {
            "BART": train_step(bart_model, lambda model=bart_model: model(
                input_ids=src, decoder_input_ids=tgt_in, labels=tgt_out).loss, precision, device),
            "ours": train_step(our_model, lambda model=our_model: model.loss(src, tgt_in, tgt_out), precision,
                               device),
        }
        seconds = time_interleaved(steps_of, steps, warmup, synchronizer(device))
        row = {}
        for name, times in seconds.items():
            per_second = [tokens / s for s in times]
            row[name] = {"ms_per_step": spread(times, 1000), "tokens_per_s": spread(per_second)}
            if peak is not None and precision in peak:
                peak_flops = peak[precision]["gflops"]["median"] * 1e9
                row[name]["mfu"] = spread([t * flops["flops_per_token"] / peak_flops for t in per_second])
        row["speedup"] = ratios(seconds["BART"], seconds["ours"])  # BART's step time / ours, round by round
        result[precision] = row
        del bart_model, our_model, steps_of
    return result


def report(result: dict) -> str:
    s = result["settings"]
    lines = [f"{s['device']}, threads {s['threads']}; {s['dims']} dimensions (d_model {s['d_model']}, "
             f"{s['n_encoder_layers']}+{s['n_decoder_layers']} layers); batch {s['batch']} x ({s['src_len']} + "
             f"{s['tgt_len']}) tokens; {s['steps']} timed steps each, alternating; median [min-max]; "
             f"{result['flops']['flops_per_token'] / 1e6:.2f} MFLOP/token",
             f"{'model':<8} {'precision':<9} {'ms/step':>8} {'tokens/s':>22} {'MFU':>7}"]
    for precision in ("fp32", "bf16"):
        if precision not in result:
            continue
        for name in ("BART", "ours"):
            figures = result[precision][name]
            rate = figures["tokens_per_s"]
            mfu = f"{100 * figures['mfu']['median']:6.1f}%" if "mfu" in figures else "   n/a"
            lines.append(f"{name:<8} {precision:<9} {figures['ms_per_step']['median']:>8.1f} "
                         f"{rate['median']:>9.0f} [{rate['min']:.0f}-{rate['max']:.0f}] {mfu:>7}")
        speedup = result[precision]["speedup"]
        lines.append(f"{'speed-up':<8} {precision:<9} {'':>8} {speedup['median']:>8.2f}x "
                     f"[{speedup['min']:.2f}-{speedup['max']:.2f}]")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each system (alternating)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dims", default="bench", choices=sorted(DIMS), help="model dimensions (default bench)")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny dimensions, batch 4 x (32 + 32), 3 steps")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = measure_peak(args.device, quick=args.quick, precisions=args.precision)
    if args.quick:
        result = run(args.precision, steps=3, warmup=1, dims="quick", batch=4, src_len=32, tgt_len=32,
                     device=args.device, peak=peak)
    else:
        result = run(args.precision, steps=args.steps, dims=args.dims, batch=args.batch, device=args.device,
                     peak=peak)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"peak": peak, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
