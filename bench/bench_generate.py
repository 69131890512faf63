"""Decoding speed against transformers' BART `generate()`, side by side in one run.

    python bench/bench_generate.py [--repeats 5] [--threads 2] [--batches 1 8] [--device cpu|cuda] [--quick]
                                   [--json FILE] [--profile]

Both models (bench/models.py): random weights, vocab 8192, d_model 256, 4+4 layers, 4 heads, ffn 1024 (GELU),
post-norm, sinusoidal positions for ours (BART: learned). A 64-token random source, greedy decoding of exactly 128
new tokens (min_new_tokens = max_new_tokens on both, so no early </s>), batch 1 and 8, with and without the
decoder cache, and ours also compiled (`GenerationConfig(compile=True)`: torch.compile over a static cache),
which is compared with BART's cached `generate()`. New tokens/s = batch x 128 / wall time of the whole call
(encoder included). Time to first token = wall time of the same call with one new token. Runs are interleaved
(A, B, A, B, ...) and the median is reported with its range, so that whatever else runs on the machine falls on
both. The compiled case compiles in the warm-up call, whose time is printed. `--quick`: tiny dimensions, 16 new
tokens from a 16-token source, 2 repeats, no uncached runs. Needs the `bench` extra.

Ours decodes through `seq2seq.generation.generate` with a stand-in tokenizer (ids 0-3 reserved, nothing
decoded to text that matters): this measures the model and the decoding loop, not SentencePiece.
--profile prints where a batch-1 cached decoding step of ours spends its time (torch.profiler).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import ratios, spread, synchronizer, timed  # noqa: E402
from bench.models import DIMS, bart, ours  # noqa: E402
from seq2seq.generation import GenerationConfig, generate  # noqa: E402
from seq2seq.model import Transformer  # noqa: E402

SRC_LEN, NEW_TOKENS = 64, 128
MODES = ("cache", "compiled", "no cache")


class StandInTokenizer:
    """The reserved ids of seq2seq.tokenizer (pad 0, unk 1, <s> 2, </s> 3) over a vocabulary of plain ids."""

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def is_special(self, i: int) -> bool:
        return i < 4

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids if int(i) >= 4)


def our_call(model: Transformer, src: torch.Tensor, new_tokens: int, mode: str) -> Callable[[], None]:
    sources = src.tolist()
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=mode != "no cache",
                              compile=mode == "compiled")
    tokenizer = StandInTokenizer(model.config.vocab_size)

    def call() -> None:
        results = generate(model, tokenizer, sources, config)
        assert all(len(r.token_ids) == new_tokens for r in results)

    return call


def bart_call(model, src: torch.Tensor, new_tokens: int, mode: str) -> Callable[[], None]:
    src = src.to(model.device)
    mask = torch.ones_like(src)
    use_cache = mode != "no cache"

    def call() -> None:
        with torch.inference_mode():
            out = model.generate(input_ids=src, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=use_cache)
        assert out.shape[1] == new_tokens + 1  # decoder start token + the new tokens

    return call


def profile_ours(model: Transformer, steps: int = 50) -> None:
    from torch.profiler import ProfilerActivity, profile

    src = torch.randint(4, model.config.vocab_size, (1, SRC_LEN))
    call = our_call(model, src, steps, "cache")
    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def run(batches=(1, 8), repeats: int = 5, modes=MODES, dims: str = "bench", src_len: int = SRC_LEN,
        new_tokens: int = NEW_TOKENS, device: str = "cpu") -> dict:
    """New tokens/s of each decoding mode and time to first token, ours and BART's, as medians with their spread
    over interleaved repeats (uncached: half as many), and the seconds our compiled case took to compile."""
    torch.manual_seed(0)
    synchronize = synchronizer(device)
    models = {"ours": ours(dims).to(device).eval(), "BART": bart(dims).to(device).eval()}
    makers = {"ours": our_call, "BART": bart_call}
    vocab = DIMS[dims]["vocab_size"]
    # BART has no compiled encoder-decoder path: our compiled decoding is compared with its cached generate().
    bart_modes = [m for m in ("cache", "no cache") if m in modes or (m == "cache" and "compiled" in modes)]
    cases = []  # ((batch, mode or "first <mode>", system), call, repeats)
    for batch in batches:
        src = torch.randint(4, vocab, (batch, src_len), generator=torch.Generator().manual_seed(batch))
        systems = [(mode, "ours") for mode in modes] + [(mode, "BART") for mode in bart_modes]
        for mode, system in sorted(systems, key=lambda case: MODES.index(case[0])):
            make, model = makers[system], models[system]
            mode_repeats = repeats if mode != "no cache" else max(1, repeats // 2)
            cases.append(((batch, mode, system), make(model, src, new_tokens, mode), mode_repeats))
            if mode != "no cache":
                cases.append(((batch, f"first {mode}", system), make(model, src, 1, mode), repeats))
    warmup_s = {key: timed(call, synchronize) for key, call, _ in cases}  # a compiled case compiles here
    times: dict[tuple, list[float]] = {key: [] for key, _, _ in cases}
    for repeat in range(max(r for _, _, r in cases)):
        for key, call, case_repeats in cases:
            if repeat < case_repeats:
                times[key].append(timed(call, synchronize))

    decoding, first_token = [], []
    for batch in batches:
        for mode in modes:
            bart_mode = "no cache" if mode == "no cache" else "cache"
            ours_s, bart_s = times[(batch, mode, "ours")], times.get((batch, bart_mode, "BART"), [])
            row = {"batch": batch, "mode": mode, "ours_tokens_per_s": spread([batch * new_tokens / s for s in ours_s])}
            if bart_s:
                n = min(len(ours_s), len(bart_s))  # paired by round
                row["BART_mode"] = bart_mode
                row["BART_tokens_per_s"] = spread([batch * new_tokens / s for s in bart_s])
                row["speedup"] = ratios(bart_s[:n], ours_s[:n])
            if mode == "compiled":
                row["compile_s"] = warmup_s[(batch, mode, "ours")]
            decoding.append(row)
            if mode != "no cache":
                row = {"batch": batch, "mode": mode, "ours_ms": spread(times[(batch, f"first {mode}", "ours")], 1000)}
                if (batch, "first cache", "BART") in times:
                    row["BART_ms"] = spread(times[(batch, "first cache", "BART")], 1000)
                first_token.append(row)
    return {"settings": {"dims": dims, **DIMS[dims], "batches": list(batches), "src_len": src_len,
                         "new_tokens": new_tokens, "repeats": repeats, "modes": list(modes), "device": str(device),
                         "threads": torch.get_num_threads(), "decoding": "greedy, exactly new_tokens tokens",
                         "timing": "calls of all cases interleaved; median over repeats (uncached: half as many)"},
            "decoding": decoding, "time_to_first_token": first_token}


def report(result: dict) -> str:
    s = result["settings"]
    lines = [f"{s['device']}, {platform.processor() or platform.machine()}, {s['threads']} threads, torch "
             f"{torch.__version__}; {s['dims']} dimensions; source {s['src_len']} tokens, {s['new_tokens']} new "
             f"tokens; median [min-max] of interleaved runs",
             "| batch | ours: decoding | ours tokens/s | BART tokens/s (same cache setting) | ours / BART |",
             "|---|---|---|---|---|"]
    for row in result["decoding"]:
        ours_rate = row["ours_tokens_per_s"]
        bart_rate, speedup = row.get("BART_tokens_per_s"), row.get("speedup")
        lines.append(f"| {row['batch']} | {row['mode']} | {ours_rate['median']:.0f} [{ours_rate['min']:.0f}-"
                     f"{ours_rate['max']:.0f}] | "
                     + (f"{bart_rate['median']:.0f} [{bart_rate['min']:.0f}-{bart_rate['max']:.0f}] | "
                        f"{speedup['median']:.2f}x [{speedup['min']:.2f}-{speedup['max']:.2f}] |"
                        if bart_rate else "n/a | n/a |"))
    lines += ["", "| batch | ours: decoding | ours time to first token | BART time to first token |",
              "|---|---|---|---|"]
    for row in result["time_to_first_token"]:
        bart_ms = f"{row['BART_ms']['median']:.1f} ms" if "BART_ms" in row else "n/a"
        lines.append(f"| {row['batch']} | {row['mode']} | {row['ours_ms']['median']:.1f} ms | {bart_ms} |")
    compiled = [row for row in result["decoding"] if "compile_s" in row]
    if compiled:
        lines.append("\nCompiling (the first call of each shape; graphs are cached on disk across runs): "
                     + ", ".join(f"batch {row['batch']}: {row['compile_s']:.1f} s" for row in compiled))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each cached case (uncached: fewer)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-uncached", action="store_true", help="skip the (slow) runs without a cache")
    parser.add_argument("--no-compile", action="store_true", help="skip our compiled decoding (compiles for ~1 min)")
    parser.add_argument("--only-compiled", action="store_true",
                        help="only our compiled decoding (and BART's cached generate() to compare it with)")
    parser.add_argument("--dims", default="bench", choices=sorted(DIMS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny dimensions, 16 new tokens, 2 repeats, no uncached")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--profile", action="store_true", help="profile a batch-1 cached run of ours and stop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        torch.manual_seed(0)
        profile_ours(ours(args.dims).eval())
        return
    modes = [m for m in MODES if not (m == "no cache" and (args.no_uncached or args.quick or args.only_compiled))
             and not (m == "compiled" and args.no_compile) and not (m == "cache" and args.only_compiled)]
    started = time.perf_counter()
    if args.quick:
        result = run(args.batches, repeats=2, modes=modes, dims="quick", src_len=16, new_tokens=16,
                     device=args.device)
    else:
        result = run(args.batches, args.repeats, modes, args.dims, device=args.device)
    print(report(result))
    print(f"\n({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
