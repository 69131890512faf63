"""Classification, text to text: the encoder reads the text under a classifier's task marker, the decoder
scores each label word, and the label probabilities are a softmax over those scores.

A classifier (from a fine-tuned checkpoint's `inference.json`, see `seq2seq.prompting.InferenceSpec`) is

    {"task": "is_joke", "tone": "plain", "template": "Is this a joke? {text}",
     "labels": {"true": "yes", "false": "no"}}

(tone and template optional: the text is put into the template it was phrased with in training, behind the
task marker and tone token), and a label word's score is the summed log-probability of `<s> label-word </s>`,
teacher-forced. Every
(text, label word) pair is scored in one decoder pass per batch.

`seq2seq classify --model DIR [--json] TEXT...` prints them (`-` reads texts from standard input, one per line).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from seq2seq.checkpoint import load_pretrained, unwrap
from seq2seq.device import resolve_device
from seq2seq.generation import eval_mode, right_pad
from seq2seq.model import Transformer
from seq2seq.prompting import InferenceSpec, build_source, check_classifier


@torch.inference_mode()
def classify(
    model: Transformer,
    tokenizer,
    texts: Sequence[str],
    classifier: Mapping[str, Any],
    batch_size: int = 32,
) -> list[dict[str, float]]:
    """For each text, {label: probability} over the classifier's labels, in the order `classifier["labels"]`
    lists them, e.g. [{"true": 0.83, "false": 0.17}, ...]; each dict sums to 1. A text longer than the model's
    source length keeps its end (`build_source` cuts from the left)."""
    check_classifier(classifier)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = unwrap(model)
    device = next(model.parameters()).device
    labels = list(classifier["labels"])
    words = [[tokenizer.bos_id, *tokenizer.encode(word), tokenizer.eos_id] for word in classifier["labels"].values()]
    targets, _ = right_pad(words, tokenizer.pad_id, device)  # (L, T); padding only at the end
    tgt_in, tgt_out = targets[:, :-1], targets[:, 1:]
    template = classifier.get("template", "{text}")
    results = []
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            sources = [build_source(tokenizer, template.replace("{text}", text), task=classifier["task"],
                                    tone=classifier.get("tone"),
                                    max_len=model.config.max_seq_len).ids for text in batch]
            src_ids, src_padding_mask = right_pad(sources, tokenizer.pad_id, device)
            encoder_out = model.encode(src_ids, src_padding_mask)
            # Row i * L + j pairs text i with label word j. No target mask: padding comes after the last real
            # position, and the decoder is causal.
            pairs = len(batch) * len(labels)
            mask = None if src_padding_mask is None else src_padding_mask.repeat_interleave(len(labels), 0)
            logits = model.decode(tgt_in.repeat(len(batch), 1), encoder_out.repeat_interleave(len(labels), 0), mask,
                                  src_ids=src_ids.repeat_interleave(len(labels), 0))
            out = tgt_out.repeat(len(batch), 1)  # (pairs, T-1)
            log_probs = F.log_softmax(logits.float(), -1).gather(-1, out[..., None]).squeeze(-1)
            scores = log_probs.masked_fill(out == tokenizer.pad_id, 0.0).sum(-1).view(pairs // len(labels), -1)
            for row in scores.softmax(-1).tolist():
                results.append(dict(zip(labels, row, strict=True)))
    return results


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
    texts = [line.rstrip("\n") for line in sys.stdin] if args.texts == ["-"] else args.texts
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
