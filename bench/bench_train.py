"""Training throughput against transformers' BartForConditionalGeneration, side by side in one run.

    python bench/bench_train.py [--steps 10] [--precision fp32 bf16]

Both models: vocab 8192, d_model 256, 4+4 layers, 4 heads, ffn 1024, batch 32 x (128 source + 128 target
tokens), AdamW, random weights and tokens; tokens/s counts source + target tokens per optimizer step.
Needs the `bench` extra (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from seq2seq.model import ModelConfig, Transformer

VOCAB, D_MODEL, LAYERS, HEADS, FFN = 8192, 256, 4, 4, 1024
BATCH, SRC_LEN, TGT_LEN = 32, 128, 128


def ours(positions: str = "sinusoidal") -> Transformer:
    config = ModelConfig(vocab_size=VOCAB, d_model=D_MODEL, n_heads=HEADS, n_encoder_layers=LAYERS,
                         n_decoder_layers=LAYERS, d_ff=FFN, dropout=0.1, max_seq_len=512, positions=positions,
                         norm_placement="post", activation="gelu")
    return Transformer(config)


def bart():
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(vocab_size=VOCAB, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
                        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                        decoder_ffn_dim=FFN, max_position_embeddings=512, dropout=0.1, attention_dropout=0.0,
                        activation_dropout=0.0, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                        decoder_start_token_id=2)
    return BartForConditionalGeneration(config)


def time_interleaved(steps: dict, rounds: int) -> dict[str, float]:
    """Median seconds per step of each system, timed in alternation (ABAB...) so that drift in the machine's
    speed, which on a shared VM is often larger than the gap being measured, falls on both alike."""
    for step in steps.values():  # warm-up
        step()
        step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each system (alternating)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    src = torch.randint(4, VOCAB, (BATCH, SRC_LEN))
    tgt = torch.randint(4, VOCAB, (BATCH, TGT_LEN + 1))
    tgt_in, tgt_out = tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()
    tokens = BATCH * (SRC_LEN + TGT_LEN)
    print(f"threads {args.threads}; batch {BATCH} x ({SRC_LEN} + {TGT_LEN}) tokens; {args.steps} timed steps each, "
          f"alternating; median")
    print(f"{'model':<28} {'precision':<9} {'ms/step':>8} {'tokens/s':>9}")
    for precision in args.precision:
        torch.manual_seed(0)
        bart_model, our_model = bart().train(), ours().train()
        steps = {
            "BART (transformers)": train_step(bart_model, lambda model=bart_model: model(
                input_ids=src, decoder_input_ids=tgt_in, labels=tgt_out).loss, precision),
            "ours": train_step(our_model, lambda model=our_model: model.loss(src, tgt_in, tgt_out), precision),
        }
        seconds = time_interleaved(steps, args.steps)
        for name, value in seconds.items():
            print(f"{name:<28} {precision:<9} {1000 * value:>8.1f} {tokens / value:>9.0f}", flush=True)
        print(f"{'speed-up':<28} {precision:<9} {'':>8} "
              f"{seconds['BART (transformers)'] / seconds['ours']:>8.2f}x")


def train_step(model: torch.nn.Module, loss_fn, precision: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


if __name__ == "__main__":
    main()
