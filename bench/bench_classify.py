"""Fine-tuned classification and speaker attribution against simple baselines, on the mixture's test split.

    python bench/bench_classify.py --model runs/finetune/final [--mixture data/mixture/default]

- Sarcasm (sarcasm_headlines) and joke detection (humor_colbert, and all is_joke sources): accuracy of the model's
  label-word likelihood classifier against a TF-IDF (word 1-2-grams + character 2-5-grams) + logistic
  regression baseline trained on the same train split, and the majority class.
- Speaker attribution (Tiny Shakespeare; the prompt holds the scene's last speeches, then the line): the exact
  match of greedy answers and of beam search's (`--num-beams`, 4), against the train split's most common speaker
  and a rule that reads the scene: "the speaker of the speech two back" (dialogue alternates).
Needs the `bench` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union

from data_pipelines.mixture import load_mixture
from seq2seq.checkpoint import load_pretrained
from seq2seq.classify import classify
from seq2seq.generation import GenerationConfig, generate
from seq2seq.metrics import exact_match
from seq2seq.prompting import InferenceSpec, build_source
from seq2seq.tasks import CLASSIFIER_QUESTIONS


def raw_text(prompt: str, templates: tuple[str, ...]) -> str:
    """The classified text inside a phrased prompt ("Is this headline sarcastic? {text}" -> text)."""
    for template in templates:
        prefix, suffix = template.split("{text}")
        if prompt.startswith(prefix) and prompt.endswith(suffix):
            return prompt[len(prefix):len(prompt) - len(suffix)]
    return prompt


def tfidf_accuracy(train: list[dict], test: list[dict], templates: tuple[str, ...]) -> float:
    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))
    classifier = make_pipeline(features, LogisticRegression(C=4.0, max_iter=2000))
    classifier.fit([raw_text(e["prompt"], templates) for e in train], [e["response"] for e in train])
    predicted = classifier.predict([raw_text(e["prompt"], templates) for e in test])
    return float(np.mean([p == e["response"] for p, e in zip(predicted, test)]))


def two_back(prompt: str) -> str | None:
    """The speaker of the speech two before the quoted line, from the scene at the top of a speaker prompt
    ("NAME:\nline" blocks, then the question); None when the scene has fewer than two speeches."""
    scene = prompt.split("\n\n")[:-1]
    return scene[-2].split(":\n")[0] if len(scene) >= 2 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/finetune/final")
    parser.add_argument("--mixture", default="data/mixture/default")
    parser.add_argument("--num-beams", type=int, default=4, help="beams for the second speaker row (default 4)")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args()
    model, tokenizer = load_pretrained(args.model)
    spec = InferenceSpec.load(args.model)
    train, test = load_mixture(args.mixture, "train"), load_mixture(args.mixture, "test")
    rows = []
    groups = [("sarcasm (sarcasm_headlines)", "is_sarcastic", "sarcasm", "sarcasm_headlines"),
              ("joke (humor_colbert)", "is_joke", "joke", "humor_colbert"),
              ("joke (all is_joke sources)", "is_joke", "joke", None)]
    for name, task, label, source in groups:
        task_train = [e for e in train if e["task"] == task]
        task_test = [e for e in test if e["task"] == task and (source is None or e["source"] == source)]
        probabilities = classify(model, tokenizer, [e["prompt"] for e in task_test],
                                 {**spec.classifiers[label], "template": "{text}"})
        model_accuracy = float(np.mean([(p["true"] >= 0.5) == (e["response"] == "yes")
                                        for p, e in zip(probabilities, task_test)]))
        majority = Counter(e["response"] for e in task_train).most_common(1)[0][0]
        rows.append({"task": name, "n": len(task_test), "model": model_accuracy,
                     "baseline": "TF-IDF + logistic regression",
                     "baseline_accuracy": tfidf_accuracy(task_train, task_test, CLASSIFIER_QUESTIONS[task]),
                     "majority": float(np.mean([e["response"] == majority for e in task_test]))})
    speakers = [e for e in test if e["task"] == "speaker"]
    sources = [build_source(tokenizer, e["prompt"], task="speaker", tone="plain", max_len=model.config.max_seq_len).ids
               for e in speakers]
    majority = Counter(e["response"] for e in train if e["task"] == "speaker").most_common(1)[0][0]
    for decoding, beams in [("greedy", 1), (f"{args.num_beams} beams", args.num_beams)]:
        settings = GenerationConfig(max_new_tokens=8, num_beams=beams)
        answers = [r.text for start in range(0, len(sources), 64)
                   for r in generate(model, tokenizer, sources[start:start + 64], settings)]
        rows.append({"task": f"speaker attribution (exact match, {decoding})", "n": len(speakers),
                     "model": float(np.mean([exact_match(a, e["response"]) for a, e in zip(answers, speakers)])),
                     "baseline": "speaker two speeches back",
                     "baseline_accuracy": float(np.mean([two_back(e["prompt"]) == e["response"] for e in speakers])),
                     "majority": float(np.mean([e["response"] == majority for e in speakers]))})
    print("| task | n | model | baseline | baseline accuracy | majority class |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['task']} | {row['n']} | {row['model']:.3f} | {row['baseline']} | {row['baseline_accuracy']:.3f} "
              f"| {row['majority']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
