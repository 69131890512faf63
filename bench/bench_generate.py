"""Decoding speed against transformers' BART `generate()`, side by side in one run.

    python bench/bench_generate.py [--repeats 5] [--threads 2] [--profile]

Both models: random weights, vocab 8192, d_model 256, 4+4 layers, 4 heads, ffn 1024 (GELU), post-norm,
sinusoidal positions for ours (BART: learned). A 64-token random source, greedy decoding of exactly 128 new
tokens (min_new_tokens = max_new_tokens on both, so no early </s>), batch 1 and 8, with and without the
decoder cache, and ours also compiled (`GenerationConfig(compile=True)`: torch.compile over a static cache),
which is compared with BART's cached `generate()`. New tokens/s = batch x 128 / wall time of the whole call
(encoder included). Time to first token = wall time of the same call with one new token. Runs are interleaved
(A, B, A, B, ...) and the median is reported, so that whatever else runs on the machine falls on both. The
compiled case compiles in the warm-up call, whose time is printed. Needs the `bench` extra.

Ours decodes through `seq2seq.generation.generate` with a stand-in tokenizer (ids 0-3 reserved, nothing
decoded to text that matters): this measures the model and the decoding loop, not SentencePiece.
--profile prints where a batch-1 cached decoding step of ours spends its time (torch.profiler).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from seq2seq.generation import GenerationConfig, generate
from seq2seq.model import ModelConfig, Transformer

VOCAB, D_MODEL, LAYERS, HEADS, FFN = 8192, 256, 4, 4, 1024
SRC_LEN, NEW_TOKENS = 64, 128
PAD, BOS, EOS = 0, 2, 3


class StandInTokenizer:
    """The reserved ids of seq2seq.tokenizer (pad 0, unk 1, <s> 2, </s> 3) over a vocabulary of plain ids."""

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3
    vocab_size = VOCAB

    def is_special(self, i: int) -> bool:
        return i < 4

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids if int(i) >= 4)


def ours() -> Transformer:
    config = ModelConfig(vocab_size=VOCAB, d_model=D_MODEL, n_heads=HEADS, n_encoder_layers=LAYERS,
                         n_decoder_layers=LAYERS, d_ff=FFN, dropout=0.1, max_seq_len=512, positions="sinusoidal",
                         norm_placement="post", activation="gelu")
    return Transformer(config).eval()


def bart():
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(vocab_size=VOCAB, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
                        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                        decoder_ffn_dim=FFN, max_position_embeddings=512, dropout=0.1, pad_token_id=PAD,
                        bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=BOS, forced_bos_token_id=None,
                        forced_eos_token_id=None)
    return BartForConditionalGeneration(config).eval()


def our_call(model: Transformer, src: torch.Tensor, new_tokens: int, mode: str) -> Callable[[], None]:
    sources = src.tolist()
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=mode != "no cache",
                              compile=mode == "compiled")
    tokenizer = StandInTokenizer()

    def call() -> None:
        results = generate(model, tokenizer, sources, config)
        assert all(len(r.token_ids) == new_tokens for r in results)

    return call


def bart_call(model, src: torch.Tensor, new_tokens: int, mode: str) -> Callable[[], None]:
    mask = torch.ones_like(src)
    use_cache = mode != "no cache"

    def call() -> None:
        with torch.inference_mode():
            out = model.generate(input_ids=src, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=use_cache)
        assert out.shape[1] == new_tokens + 1  # decoder start token + the new tokens

    return call


def timed(call: Callable[[], None]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def profile_ours(model: Transformer, steps: int = 50) -> None:
    from torch.profiler import ProfilerActivity, profile

    src = torch.randint(4, VOCAB, (1, SRC_LEN))
    call = our_call(model, src, steps, "cache")
    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each cached case (uncached: fewer)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-uncached", action="store_true", help="skip the (slow) runs without a cache")
    parser.add_argument("--no-compile", action="store_true", help="skip our compiled decoding (compiles for ~1 min)")
    parser.add_argument("--profile", action="store_true", help="profile a batch-1 cached run of ours and stop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"ours": ours(), "BART": bart()}
    if args.profile:
        profile_ours(models["ours"])
        return
    makers = {"ours": our_call, "BART": bart_call}
    modes = ["cache", "compiled", "no cache"]
    if args.no_uncached:
        modes.remove("no cache")
    if args.no_compile:
        modes.remove("compiled")

    cases = []  # ((batch, mode or "first ...", system), call, repeats)
    for batch in args.batches:
        src = torch.randint(4, VOCAB, (batch, SRC_LEN), generator=torch.Generator().manual_seed(batch))
        for mode in modes:
            repeats = args.repeats if mode != "no cache" else max(1, args.repeats // 2)
            for system, make in makers.items():
                if mode == "compiled" and system == "BART":
                    continue  # BART's generate() has no compiled encoder-decoder path; ours is compared to its cache
                cases.append(((batch, mode, system), make(models[system], src, NEW_TOKENS, mode), repeats))
            for system, make in makers.items():
                if mode != "no cache" and not (mode == "compiled" and system == "BART"):
                    cases.append(((batch, f"first {mode}", system), make(models[system], src, 1, mode), args.repeats))
    compile_s = {}
    for (batch, mode, system), call, _ in cases:  # warm-up; a compiled case compiles here
        compile_s[(batch, mode, system)] = timed(call)
    times: dict[tuple, list[float]] = {key: [] for key, _, _ in cases}
    for repeat in range(max(r for _, _, r in cases)):
        for key, call, repeats in cases:
            if repeat < repeats:
                times[key].append(timed(call))

    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; source {SRC_LEN} tokens, {NEW_TOKENS} new tokens; median of interleaved runs")
    print("| batch | ours: decoding | ours tokens/s | BART tokens/s (same cache setting) | ours / BART |")
    print("|---|---|---|---|---|")
    for batch in args.batches:
        for mode in modes:
            ours_rate = batch * NEW_TOKENS / statistics.median(times[(batch, mode, "ours")])
            bart_mode = "no cache" if mode == "no cache" else "cache"
            bart_rate = batch * NEW_TOKENS / statistics.median(times[(batch, bart_mode, "BART")])
            print(f"| {batch} | {mode} | {ours_rate:.0f} | {bart_rate:.0f} | {ours_rate / bart_rate:.2f}x |")
    print("\n| batch | ours: decoding | ours time to first token | BART time to first token |")
    print("|---|---|---|---|")
    for batch in args.batches:
        for mode in (m for m in modes if m != "no cache"):
            ours_ms = statistics.median(times[(batch, f"first {mode}", "ours")]) * 1000
            bart_ms = statistics.median(times[(batch, "first cache", "BART")]) * 1000
            print(f"| {batch} | {mode} | {ours_ms:.1f} ms | {bart_ms:.1f} ms |")
    if "compiled" in modes:
        print("\nCompiling (the first call of each shape; graphs are cached on disk across runs): " + ", ".join(
            f"batch {b}: {compile_s[(b, 'compiled', 'ours')]:.1f} s" for b in args.batches))


if __name__ == "__main__":
    main()
