"""Val nats/char after 2.5, 5 and 10 minutes of training `shakespeare-cpu`, and its tokens/s, against the
character-level reference curve of nanoGPT on the same split.

    python bench/bench_pretrain.py [--config configs/pretrain/shakespeare-cpu.yaml] [--out runs/bench-pretrain]
                                   [--eval-at-minutes 2.5 5 10] [--stop-at-minutes M] [--quick] [--json FILE]
                                   [KEY=VALUE ...]

Runs `seq2seq pretrain` (as `python -m pretrain`, a fresh run into `--out`) with full-val evaluations at those
training times (evaluation time is not counted) and prints them beside nanoGPT's CPU recipe for Tiny Shakespeare
(../shared/reference/nanogpt-cpu.md, recipe 3: a character-level GPT measured on this kind of machine, its curve
interpolated at the same minute). `--stop-at-minutes M` sends the run SIGINT once its M-minute evaluation is
logged (it saves a checkpoint and exits with 130), for a wall-clock budget shorter than the config's steps.
`--quick`: configs/pretrain/tiny.yaml, evaluated after 0.1 minutes and stopped there, a smoke test.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import spread  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# nanoGPT's CPU recipe stretched to 11,000 iterations (recipe 3 of ../shared/reference/nanogpt-cpu.md): (minutes
# since process start, val nats/char from 20 random batches, about +-0.03).
NANOGPT_CPU = [(0.93, 2.1034), (1.75, 1.9065), (2.43, 1.8283), (3.23, 1.7605), (4.11, 1.6734), (4.95, 1.6827),
               (5.70, 1.6006), (6.51, 1.6373), (7.46, 1.6073), (8.42, 1.5936), (9.34, 1.5665)]
# nanoGPT's README on one A100, config/train_shakespeare_char.py (6 layers, 384 channels): best val loss.
NANOGPT_A100 = {"minutes": 3.0, "val_nats_per_char": 1.4697, "source": "nanoGPT README, one A100, ~3 minutes"}
QUICK = {"config": "configs/pretrain/tiny.yaml", "eval_at_minutes": [0.1], "stop_at_minutes": 0.1,
         "overrides": ["train.max_steps=100000", "train.eval_every=100000", "train.save_every=100000"]}


def reference_at(minutes: float) -> dict | None:
    """The CPU reference curve at `minutes`: interpolated inside it, its last point past its end, None before it."""
    points = NANOGPT_CPU
    if minutes >= points[-1][0]:
        return {"minutes": points[-1][0], "val_nats_per_char": points[-1][1], "how": "its end"}
    if minutes < points[0][0]:
        return None
    for (m0, v0), (m1, v1) in zip(points, points[1:]):
        if m0 <= minutes <= m1:
            value = v0 + (v1 - v0) * (minutes - m0) / (m1 - m0)
            return {"minutes": minutes, "val_nats_per_char": value, "how": "interpolated"}
    raise AssertionError("unreachable")


def read_rows(path: Path) -> list[dict]:
    """metrics.jsonl's complete rows (a line being written may be torn)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def start_interruptible(command: list[str]) -> subprocess.Popen:
    """Start `command` so that SIGINT reaches it: a child inherits an ignored SIGINT (as in a background job) and
    the trainer would then keep ignoring it, so for the start an ignored SIGINT gets a handler, which exec resets."""
    ignored = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, cwd=REPO)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def run(config: str = "configs/pretrain/shakespeare-cpu.yaml", out: str = "runs/bench-pretrain",
        overrides=(), eval_at_minutes=(2.5, 5, 10), stop_at_minutes: float | None = None,
        timeout_s: float | None = None, grace_s: float = 120.0) -> dict:
    """Pretrain with timed full evaluations; stop with SIGINT after the `stop_at_minutes` evaluation (or at
    `timeout_s` of wall time); return the evaluations, the final one, and tokens/s over the logged windows."""
    minutes = ", ".join(f"{m:g}" for m in eval_at_minutes)
    command = [sys.executable, "-m", "pretrain", "--config", config, f"output_dir={out}", "overwrite=true",
               f"train.eval_at_minutes=[{minutes}]", *overrides]
    metrics = REPO / out / "metrics.jsonl"  # `out` relative to the repository, where the run starts
    metrics.unlink(missing_ok=True)
    started = time.monotonic()
    process = start_interruptible(command)
    stopped = "finished"
    try:
        while process.poll() is None:
            time.sleep(0.5)
            reached = stop_at_minutes is not None and any(
                r.get("at_minutes", -1) >= stop_at_minutes for r in read_rows(metrics))
            late = timeout_s is not None and time.monotonic() - started > timeout_s
            if reached or late:
                stopped = (f"SIGINT after the {stop_at_minutes:g}-minute evaluation" if reached
                           else f"SIGINT at the {timeout_s:g} s wall-clock limit")
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    stopped += ", then killed"
                break
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    wall_s = time.monotonic() - started
    if process.returncode not in (0, 130):
        raise RuntimeError(f"`{' '.join(command)}` exited with {process.returncode}")
    rows = read_rows(metrics)
    evaluations = [{key: r[key] for key in ("at_minutes", "step", "train_minutes", "val_nats_per_char",
                                            "val_bits_per_char", "val_loss") if key in r}
                   | {"reference": reference_at(r["at_minutes"])} for r in rows if "at_minutes" in r]
    full = [r for r in rows if "val_nats_per_char" in r and "at_minutes" not in r and "val_chars" in r]
    final = full[-1] if full and stopped == "finished" else None
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    return {"settings": {"config": config, "output_dir": out, "overrides": list(overrides),
                         "eval_at_minutes": list(eval_at_minutes), "stop_at_minutes": stop_at_minutes,
                         "command": "python " + " ".join(command[1:])},
            "stopped": stopped, "exit_code": process.returncode, "wall_s": wall_s,
            "evaluations": evaluations,
            "final": None if final is None else {key: final[key] for key in (
                "step", "train_minutes", "val_nats_per_char", "val_bits_per_char", "val_loss") if key in final},
            "tokens_per_s": spread(speeds) if speeds else None,
            "reference": {"cpu_curve": {"source": "../shared/reference/nanogpt-cpu.md, recipe 3 (2 cores; minutes "
                                                  "since process start, evaluations included)",
                                        "points": [{"minutes": m, "val_nats_per_char": v} for m, v in NANOGPT_CPU]},
                          "gpu": NANOGPT_A100}}


def report(result: dict) -> str:
    lines = []
    if result["tokens_per_s"]:
        rate = result["tokens_per_s"]
        lines.append(f"training tokens/s (source + target): median {rate['median']:.0f} "
                     f"[{rate['min']:.0f}-{rate['max']:.0f}] over {rate['n']} logged windows")
    lines += ["| training time | step | val nats/char | val bits/char | nanoGPT (char-level, CPU) |",
              "|---|---|---|---|---|"]
    for row in result["evaluations"]:
        reference = row["reference"]
        lines.append(f"| {row['at_minutes']:g} min | {row['step']} | {row['val_nats_per_char']:.4f} | "
                     f"{row['val_bits_per_char']:.4f} | " + ("" if reference is None else
                     f"{reference['val_nats_per_char']:.3f} ({reference['how']}, {reference['minutes']:.1f} min)")
                     + " |")
    final = result["final"]
    if final:
        lines.append(f"| end ({final['train_minutes']:.1f} min) | {final['step']} | {final['val_nats_per_char']:.4f} | "
                     f"{final['val_bits_per_char']:.4f} | |")
    lines.append(f"({result['stopped']}; {result['wall_s']:.0f} s wall)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pretrain/shakespeare-cpu.yaml")
    parser.add_argument("--out", default="runs/bench-pretrain")
    parser.add_argument("--eval-at-minutes", type=float, nargs="+", default=[2.5, 5, 10])
    parser.add_argument("--stop-at-minutes", type=float, help="SIGINT the run once this evaluation is logged")
    parser.add_argument("--quick", action="store_true", help="the tiny config for 0.1 minutes: a smoke test")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="extra KEY=VALUE overrides")
    args = parser.parse_args()
    if args.quick:
        result = run(QUICK["config"], args.out, [*QUICK["overrides"], *args.overrides], QUICK["eval_at_minutes"],
                     QUICK["stop_at_minutes"])
    else:
        result = run(args.config, args.out, args.overrides, args.eval_at_minutes, args.stop_at_minutes)
    print()
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
