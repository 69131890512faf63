"""Classification, text to text: the encoder reads the text under a classifier's task marker, the decoder
scores each label word, and the label probabilities are a softmax over those scores.

A classifier (from a fine-tuned checkpoint's `inference.json`, see `seq2seq.prompting.InferenceSpec`) is

    {"task": "is_joke", "tone": "plain", "template": "Is this a joke? {text}",
     "labels": {"true": "yes", "false": "no"}}

(tone and template optional: the text is put into the template it was phrased with in training, behind the
task marker and tone token), and a label word's score is log p(label-word </s> | text) from the one scorer
(`seq2seq.scoring`).

`seq2seq classify --model DIR [--json] TEXT...` prints them (`-` reads texts from standard input, one per line;
bytes that are not UTF-8 become U+FFFD).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from seq2seq.checkpoint import load_pretrained
from seq2seq.device import resolve_device
from seq2seq.model import Transformer
from seq2seq.prompting import InferenceSpec, build_source, check_classifier
from seq2seq.runtime import unwrap
from seq2seq.scoring import continuation_log_probs
from seq2seq.text import read_lines, valid_text


def classify(
    model: Transformer,
    tokenizer,
    texts: Sequence[str],
    classifier: Mapping[str, Any],
    batch_size: int = 32,
) -> list[dict[str, float]]:
    """For each text, {label: probability} over the classifier's labels, in the order `classifier["labels"]`
    lists them, e.g. [{"true": 0.83, "false": 0.17}, ...]; each dict sums to 1. A text longer than the model's
    source length keeps its end (`build_source` cuts from the left). `batch_size` counts texts."""
    check_classifier(classifier)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = list(classifier["labels"])
    words = [tokenizer.encode(word) for word in classifier["labels"].values()]
    template = classifier.get("template", "{text}")
    sources = [build_source(tokenizer, template.replace("{text}", text), task=classifier["task"],
                            tone=classifier.get("tone"), max_len=unwrap(model).config.max_seq_len).ids
               for text in texts]
    # Pair i * L + j is text i with label word j.
    scores = continuation_log_probs(model, tokenizer, [source for source in sources for _ in words],
                                    words * len(sources), batch_size * len(words))
    by_text = torch.tensor(scores, dtype=torch.float64).view(len(texts), len(words))
    return [dict(zip(labels, row, strict=True)) for row in by_text.softmax(-1).tolist()]


def classify_all(model: Transformer, tokenizer, texts: Sequence[str], spec: InferenceSpec,
                 batch_size: int = 32) -> list[dict[str, dict[str, float]]]:
    """Every classifier of a checkpoint over every text: [{"joke": {"true": p, "false": q}, "sarcasm": ...}]."""
    if not spec.classifiers:
        why = "its inference.json lists none" if spec.fine_tuned else "it is pretrained only (no inference.json)"
        raise ValueError(f"this checkpoint has no classifiers: {why}")
    per_classifier = {name: classify(model, tokenizer, texts, classifier, batch_size)
                      for name, classifier in spec.classifiers.items()}
    return [{name: probs[i] for name, probs in per_classifier.items()} for i in range(len(texts))]


def probability_true(labels: Mapping[str, float]) -> float:
    """A classifier's probability of "true" (of its first label when it has no "true")."""
    return labels["true"] if "true" in labels else next(iter(labels.values()))


def format_probabilities(probabilities: Mapping[str, Mapping[str, float]]) -> str:
    """"joke 0.83  sarcasm 0.10": each classifier's probability of "true"."""
    return "  ".join(f"{name} {probability_true(labels):.2f}" for name, labels in probabilities.items())


# ---------------------------------------------------------------------------------------------------------
# seq2seq classify


def run(args: argparse.Namespace) -> int:
    # Bytes that are not UTF-8, piped or in an argument, are kept as U+FFFD (seq2seq.text).
    texts = list(read_lines(sys.stdin)) if args.texts == ["-"] else [valid_text(text) for text in args.texts]
    model, tokenizer = load_pretrained(args.model, resolve_device(args.device))
    spec = InferenceSpec.load(args.model)
    if args.classifier:
        unknown = [name for name in args.classifier if name not in spec.classifiers]
        if unknown:
            raise ValueError(f"unknown classifier {unknown[0]!r} (this checkpoint has: "
                             f"{', '.join(spec.classifiers) or 'none'})")
        spec = InferenceSpec(spec.task, spec.tones, {name: spec.classifiers[name] for name in args.classifier},
                             spec.fine_tuned)
    for text, probabilities in zip(texts, classify_all(model, tokenizer, texts, spec, args.batch_size), strict=True):
        if args.json:
            print(json.dumps({"text": text, **probabilities}, ensure_ascii=False))
        else:
            print(f"{format_probabilities(probabilities)}\t{text}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "classify", help="joke / sarcasm probabilities of texts with a fine-tuned checkpoint",
        description="Score texts with each classifier a fine-tuned checkpoint lists in its inference.json "
                    "(e.g. joke, sarcasm): one line per text, each classifier's probability of 'true', then the "
                    "text; with --json one object per text with every label's probability.")
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify; '-' reads one per line from stdin")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    parser.add_argument("--classifier", action="append", metavar="NAME",
                        help="only this classifier (repeatable); default: all of them")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.set_defaults(run=run)
