"""Val nats/char after 2.5, 5 and 10 minutes of training `shakespeare-cpu`, and its tokens/s.

    python bench/bench_pretrain.py [--config configs/pretrain/shakespeare-cpu.yaml] [--out runs/bench-pretrain]

Runs `seq2seq pretrain` with full-val evaluations at those training times (evaluation time is not counted) and
prints them beside nanoGPT's CPU recipe for Tiny Shakespeare on the same val split (a character-level GPT,
measured on this kind of machine: 1.886 after 106 s; stretched to 11,000 iterations: 1.76 at ~3 min, 1.67 at
~5 min, 1.57 at 9.3 min).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

NANOGPT = {2.5: "1.76 at ~3 min", 5.0: "1.67 at ~5 min", 10.0: "1.57 at 9.3 min"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pretrain/shakespeare-cpu.yaml")
    parser.add_argument("--out", default="runs/bench-pretrain")
    parser.add_argument("overrides", nargs="*", help="extra KEY=VALUE overrides")
    args = parser.parse_args()
    command = [sys.executable, "-m", "pretrain", "--config", args.config, f"output_dir={args.out}",
               "train.eval_at_minutes=[2.5, 5, 10]", *args.overrides]
    subprocess.run(command, check=True)
    rows = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    final = [r for r in rows if "val_nats_per_char" in r][-1]
    print(f"\ntraining tokens/s (source + target): median {sorted(speeds)[len(speeds) // 2]:.0f}")
    print("| training time | step | val nats/char | val bits/char | nanoGPT (char-level) |")
    print("|---|---|---|---|---|")
    for row in rows:
        if "at_minutes" in row:
            print(f"| {row['at_minutes']} min | {row['step']} | {row['val_nats_per_char']:.4f} | "
                  f"{row['val_bits_per_char']:.4f} | {NANOGPT.get(row['at_minutes'], '')} |")
    print(f"| end ({final['train_minutes']:.1f} min) | {final['step']} | {final['val_nats_per_char']:.4f} | "
          f"{final['val_bits_per_char']:.4f} | |")


if __name__ == "__main__":
    main()
