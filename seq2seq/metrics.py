"""Scores for generated answers and predicted labels, shared by fine-tuning's test evaluation and the
few-shot harness. Answers are compared after SQuAD's normalisation (lower case, no punctuation, no articles,
single spaces), as lm-evaluation-harness does for exact match and token F1."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = _PUNCTUATION.sub(" ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def binary_scores(predictions: Sequence[bool], labels: Sequence[bool]) -> dict[str, float]:
    """Accuracy and F1 of the positive class."""
    tp = sum(p and y for p, y in zip(predictions, labels))
    fp = sum(p and not y for p, y in zip(predictions, labels))
    fn = sum(not p and y for p, y in zip(predictions, labels))
    accuracy = sum(p == y for p, y in zip(predictions, labels)) / max(1, len(labels))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"accuracy": accuracy, "f1": f1}


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the standard error of the mean (sample standard deviation / sqrt(n))."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def baseline_answers(known_answers: Sequence[str], n: int, rng) -> dict[str, list[str]]:
    """What two systems that never read the question answer to n queries, given the answers of a reference split
    (train, or the demonstrations): "majority", its most common answer every time, and "random", an answer drawn
    from it (so a classifier's random baseline follows the class prior). `rng`: a numpy Generator."""
    answers = list(known_answers) or [""]
    majority = Counter(answers).most_common(1)[0][0]
    return {"majority": [majority] * n, "random": [str(answers[i]) for i in rng.integers(0, len(answers), n)]}
