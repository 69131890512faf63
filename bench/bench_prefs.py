"""The effect of preference tuning: the fine-tuned model against its DPO and KTO versions, side by side.

    python bench/bench_prefs.py [--models runs/finetune/final runs/dpo/final runs/kto/final]
                                [--mixture data/mixture/default] [--limit 300] [--out FILE.json]

On the mixture's chat test prompts (plain and joke tone), greedy replies of at most 48 tokens:
- top reply share: the share of prompts answered with the most common reply (collapse to one generic answer);
- distinct-2: distinct word bigrams over all word bigrams of all replies (diversity);
- token F1 of each reply against the dataset's reply (SQuAD normalisation), averaged;
- reference NLL: nats per token of the dataset's reply (end of sequence included), given the prompt;
and the joke and sarcasm classifiers' accuracy on the test split (`classify`, threshold 0.5), and each tuning
run's training minutes (from its metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from data_pipelines.mixture import load_mixture
from seq2seq.checkpoint import load_pretrained
from seq2seq.classify import classify
from seq2seq.generation import GenerationConfig, generate
from seq2seq.metrics import token_f1
from seq2seq.prompting import InferenceSpec, build_source
from seq2seq.scoring import continuation_log_probs
from seq2seq.tasks import CHAT_TASK, CLASSIFICATION_TASKS, LABEL_WORDS, tone_of


def distinct_2(replies: list[str]) -> float:
    bigrams = [tuple(words[i:i + 2]) for reply in replies for words in [reply.lower().split()]
               for i in range(len(words) - 1)]
    return len(set(bigrams)) / max(len(bigrams), 1)


def measure(checkpoint: str, test: list[dict], limit: int, seed: int, max_src_len: int = 192) -> dict[str, float]:
    model, tokenizer = load_pretrained(checkpoint)
    spec = InferenceSpec.load(checkpoint)
    chat = [e for e in test if e["task"] == CHAT_TASK and tone_of(e) in ("plain", "joke")]
    chat = [chat[i] for i in sorted(np.random.default_rng(seed).permutation(len(chat))[:limit])]
    sources = [build_source(tokenizer, e["prompt"], task=spec.task, tone=tone_of(e) if spec.tones else None,
                            max_len=max_src_len).ids for e in chat]
    replies = []
    for start in range(0, len(sources), 64):
        replies += [r.text.strip() for r in generate(model, tokenizer, sources[start:start + 64],
                                                     GenerationConfig(max_new_tokens=48))]
    references = [e["response"] for e in chat]
    targets = [tokenizer.encode(r) for r in references]
    log_probs = continuation_log_probs(model, tokenizer, sources, targets)
    top_reply, top_count = Counter(replies).most_common(1)[0]
    figures = {"prompts": len(chat), "top_reply": top_reply, "top_reply_share": top_count / len(replies),
               "distinct_2": distinct_2(replies),
               "token_f1": float(np.mean([token_f1(p, r) for p, r in zip(replies, references)])),
               "reference_nll_per_token": -sum(log_probs) / sum(len(t) + 1 for t in targets)}
    for task, label in CLASSIFICATION_TASKS.items():
        if label not in spec.classifiers:
            continue
        rows = [e for e in test if e["task"] == task]
        probabilities = classify(model, tokenizer, [e["prompt"] for e in rows],
                                 {**spec.classifiers[label], "template": "{text}"}, batch_size=64)
        truth = [e["response"] == LABEL_WORDS[True] for e in rows]
        figures[f"{label}_accuracy"] = float(np.mean([(p["true"] >= 0.5) == t
                                                      for p, t in zip(probabilities, truth)]))
    metrics = Path(checkpoint).parent / "metrics.jsonl"
    if metrics.is_file():
        minutes = [json.loads(line).get("train_minutes") for line in metrics.read_text().splitlines() if line]
        figures["train_minutes"] = max((m for m in minutes if m is not None), default=None)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["runs/finetune/final", "runs/dpo/final", "runs/kto/final"])
    parser.add_argument("--mixture", default="data/mixture/default")
    parser.add_argument("--limit", type=int, default=300, help="chat test prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the figures here (JSON)")
    args = parser.parse_args()
    test = load_mixture(args.mixture, "test")
    results = {}
    for checkpoint in args.models:
        if not Path(checkpoint).is_dir():
            print(f"skipped: no checkpoint at {checkpoint}", file=sys.stderr)
            continue
        results[checkpoint] = measure(checkpoint, test, args.limit, args.seed)
    columns = ["top_reply_share", "distinct_2", "token_f1", "reference_nll_per_token", "joke_accuracy",
               "sarcasm_accuracy", "train_minutes"]
    print("| model | " + " | ".join(columns) + " | top reply |")
    print("|---" * (len(columns) + 2) + "|")
    for checkpoint, figures in results.items():
        cells = [f"{figures[c]:.3f}" if isinstance(figures.get(c), float) else str(figures.get(c, "")) for c in columns]
        print(f"| {checkpoint} | " + " | ".join(cells) + f" | {figures['top_reply'][:40]!r} |")
    if args.out:
        from seq2seq.files import write_json_atomic

        write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
