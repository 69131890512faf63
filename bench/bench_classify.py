"""Fine-tuned classification and speaker attribution against simple baselines, on the mixture's test split.

    python bench/bench_classify.py --model runs/finetune/final [--mixture data/mixture/default] [--limit N]
                                   [--out FILE]

- Sarcasm (sarcasm_headlines) and joke detection (humor_colbert, and all is_joke sources): accuracy of the model's
  label-word likelihood classifier against a TF-IDF (word 1-2-grams + character 2-5-grams) + logistic
  regression baseline trained on the same train split, and the majority class.
- Speaker attribution (Tiny Shakespeare; the prompt holds the scene's last speeches, then the line): the exact
  match of greedy answers and of beam search's (`--num-beams`, 4), against the train split's most common speaker
  and a rule that reads the scene: "the speaker of the speech two back" (dialogue alternates).
Accuracies carry their binomial standard error, sqrt(p (1 - p) / n): the spread a rerun on other test rows would
show (the model's scores are deterministic). `--limit N` scores the first N test rows of each task (a smoke test).
Needs the `bench` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from data_pipelines.mixture import load_mixture
from seq2seq.checkpoint import load_pretrained
from seq2seq.classify import classify
from seq2seq.generation import GenerationConfig, generate
from seq2seq.metrics import exact_match
from seq2seq.prompting import InferenceSpec, build_source
from seq2seq.tasks import CLASSIFIER_QUESTIONS


def missing_inputs(model: str, mixture: str) -> str | None:
    """Why the benchmark cannot run here (no fine-tuned checkpoint, no built mixture), or None."""
    if not (Path(model) / "config.json").is_file():
        return f"no checkpoint at {model} (make demo, or seq2seq finetune)"
    for split in ("train", "test"):
        if not (Path(mixture) / f"{split}.jsonl").is_file():
            return f"no built mixture at {mixture} (seq2seq data build --config configs/data/mixture-default.yaml)"
    return None


def accuracy(hits: list[bool]) -> dict:
    """Accuracy with its binomial standard error."""
    p = float(np.mean(hits)) if hits else math.nan
    return {"value": p, "stderr": math.sqrt(p * (1 - p) / len(hits)) if hits else math.nan, "n": len(hits)}


def raw_text(prompt: str, templates: tuple[str, ...]) -> str:
    """The classified text inside a phrased prompt ("Is this headline sarcastic? {text}" -> text)."""
    for template in templates:
        prefix, suffix = template.split("{text}")
        if prompt.startswith(prefix) and prompt.endswith(suffix):
            return prompt[len(prefix):len(prompt) - len(suffix)]
    return prompt


def tfidf_accuracy(train: list[dict], test: list[dict], templates: tuple[str, ...]) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))
    classifier = make_pipeline(features, LogisticRegression(C=4.0, max_iter=2000))
    classifier.fit([raw_text(e["prompt"], templates) for e in train], [e["response"] for e in train])
    predicted = classifier.predict([raw_text(e["prompt"], templates) for e in test])
    return accuracy([p == e["response"] for p, e in zip(predicted, test)])


def two_back(prompt: str) -> str | None:
    """The speaker of the speech two before the quoted line, from the scene at the top of a speaker prompt
    ("NAME:\nline" blocks, then the question); None when the scene has fewer than two speeches."""
    scene = prompt.split("\n\n")[:-1]
    return scene[-2].split(":\n")[0] if len(scene) >= 2 else None


def run(model_dir: str = "runs/finetune/final", mixture: str = "data/mixture/default", num_beams: int = 4,
        limit: int | None = None) -> dict:
    """Accuracy of the model and of each baseline on every task of the mixture's test split (the first `limit`
    rows of each task when given), each with its standard error."""
    model, tokenizer = load_pretrained(model_dir)
    spec = InferenceSpec.load(model_dir)
    train, test = load_mixture(mixture, "train"), load_mixture(mixture, "test")
    rows = []
    groups = [("sarcasm (sarcasm_headlines)", "is_sarcastic", "sarcasm", "sarcasm_headlines"),
              ("joke (humor_colbert)", "is_joke", "joke", "humor_colbert"),
              ("joke (all is_joke sources)", "is_joke", "joke", None)]
    for name, task, label, source in groups:
        task_train = [e for e in train if e["task"] == task]
        task_test = [e for e in test if e["task"] == task and (source is None or e["source"] == source)][:limit]
        probabilities = classify(model, tokenizer, [e["prompt"] for e in task_test],
                                 {**spec.classifiers[label], "template": "{text}"})
        majority = Counter(e["response"] for e in task_train).most_common(1)[0][0]
        rows.append({"task": name, "n": len(task_test),
                     "model": accuracy([(p["true"] >= 0.5) == (e["response"] == "yes")
                                        for p, e in zip(probabilities, task_test)]),
                     "baseline": "TF-IDF + logistic regression",
                     "baseline_accuracy": tfidf_accuracy(task_train, task_test, CLASSIFIER_QUESTIONS[task]),
                     "majority": accuracy([e["response"] == majority for e in task_test])})
    speakers = [e for e in test if e["task"] == "speaker"][:limit]
    sources = [build_source(tokenizer, e["prompt"], task="speaker", tone="plain", max_len=model.config.max_seq_len).ids
               for e in speakers]
    majority = Counter(e["response"] for e in train if e["task"] == "speaker").most_common(1)[0][0]
    for decoding, beams in [("greedy", 1), (f"{num_beams} beams", num_beams)]:
        settings = GenerationConfig(max_new_tokens=8, num_beams=beams)
        answers = [r.text for start in range(0, len(sources), 64)
                   for r in generate(model, tokenizer, sources[start:start + 64], settings)]
        rows.append({"task": f"speaker attribution (exact match, {decoding})", "n": len(speakers),
                     "model": accuracy([bool(exact_match(a, e["response"])) for a, e in zip(answers, speakers)]),
                     "baseline": "speaker two speeches back",
                     "baseline_accuracy": accuracy([two_back(e["prompt"]) == e["response"] for e in speakers]),
                     "majority": accuracy([e["response"] == majority for e in speakers])})
    return {"settings": {"model": model_dir, "mixture": mixture, "num_beams": num_beams, "limit": limit},
            "rows": rows}


def report(result: dict) -> str:
    lines = ["| task | n | model | baseline | baseline accuracy | majority class |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['task']} | {row['n']} | {row['model']['value']:.3f} ± {row['model']['stderr']:.3f} | "
                     f"{row['baseline']} | {row['baseline_accuracy']['value']:.3f} | {row['majority']['value']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/finetune/final")
    parser.add_argument("--mixture", default="data/mixture/default")
    parser.add_argument("--num-beams", type=int, default=4, help="beams for the second speaker row (default 4)")
    parser.add_argument("--limit", type=int, help="score only the first N test rows of each task")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    why = missing_inputs(args.model, args.mixture)
    if why:
        sys.exit(f"bench_classify: {why}")
    result = run(args.model, args.mixture, args.num_beams, args.limit)
    print(report(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
