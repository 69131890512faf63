"""Label-word classification: batched scores equal one (text, label) pair at a time, probabilities sum to one,
and `seq2seq classify` prints them (run in-process; test_repl.py drives the CLI through real pipes)."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest
import torch
from helpers import PROMPTS, tiny_model, train_tokenizer

from seq2seq.checkpoint import save_pretrained
from seq2seq.classify import classify
from seq2seq.cli import main
from seq2seq.prompting import build_source

CLASSIFIER = {"task": "is_joke", "labels": {"true": "yes", "false": "no"}}
INFERENCE = {"task": "chat", "tones": True,
             "classifiers": {"joke": CLASSIFIER, "sarcasm": {"task": "is_sarcastic",
                                                             "labels": {"true": "yes", "false": "no"}}}}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, seed=1)


def label_log_likelihood(model, tokenizer, text: str, task: str, word: str, tone: str | None = None) -> float:
    source = build_source(tokenizer, text, task=task, tone=tone, max_len=model.config.max_seq_len).ids
    target = [tokenizer.bos_id, *tokenizer.encode(word), tokenizer.eos_id]
    with torch.no_grad():
        log_probs = model(torch.tensor([source]), torch.tensor([target[:-1]]))[0].log_softmax(-1)
    return float(sum(log_probs[i, token] for i, token in enumerate(target[1:])))


def test_batched_probabilities_equal_one_pair_at_a_time(model, tokenizer):
    classifier = {"task": "is_joke", "labels": {"true": "yes", "false": "no", "maybe": "Why did"}}  # unequal lengths
    texts = PROMPTS + ["x" * 200]  # the last one is cut to fit the source length
    probabilities = classify(model, tokenizer, texts, classifier, batch_size=2)
    assert len(probabilities) == len(texts)
    for text, probs in zip(texts, probabilities, strict=True):
        assert list(probs) == ["true", "false", "maybe"]
        scores = torch.tensor([label_log_likelihood(model, tokenizer, text, "is_joke", word)
                               for word in classifier["labels"].values()])
        assert list(probs.values()) == pytest.approx(scores.softmax(0).tolist(), abs=1e-5)
        assert sum(probs.values()) == pytest.approx(1.0)


def test_text_is_phrased_and_toned_as_in_training(model, tokenizer):
    classifier = {**CLASSIFIER, "tone": "plain", "template": "Is this a joke? {text}"}
    probabilities = classify(model, tokenizer, PROMPTS[:2], classifier)
    for text, probs in zip(PROMPTS[:2], probabilities, strict=True):
        scores = torch.tensor([label_log_likelihood(model, tokenizer, f"Is this a joke? {text}", "is_joke", word,
                                                    tone="plain") for word in ("yes", "no")])
        assert list(probs.values()) == pytest.approx(scores.softmax(0).tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="template"):
        classify(model, tokenizer, ["x"], {**CLASSIFIER, "template": "no field"})


def test_the_task_marker_matters(model, tokenizer):
    joke = classify(model, tokenizer, PROMPTS, CLASSIFIER)
    sarcasm = classify(model, tokenizer, PROMPTS, {**CLASSIFIER, "task": "is_sarcastic"})
    assert joke != sarcasm


def test_a_bad_classifier_is_refused(model, tokenizer):
    with pytest.raises(ValueError, match="labels"):
        classify(model, tokenizer, ["x"], {"task": "is_joke", "labels": {"true": "yes"}})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, model, tokenizer):
    root = tmp_path_factory.mktemp("classify")
    save_pretrained(model, root / "pretrained", tokenizer)
    save_pretrained(model, root / "finetuned", tokenizer,
                    extra=lambda d: (d / "inference.json").write_text(json.dumps(INFERENCE)))
    return root


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["classify", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_classify_command_prints_each_labels_probability(checkpoints, model, tokenizer, capsys, monkeypatch):
    status, out, err = run_cli(capsys, "--model", str(checkpoints / "finetuned"), "--json", PROMPTS[0], PROMPTS[1])
    assert status == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["text"] for row in rows] == PROMPTS[:2]
    expected = classify(model, tokenizer, PROMPTS[:2], CLASSIFIER)
    for row, probs in zip(rows, expected, strict=True):
        assert row["joke"] == pytest.approx(probs, abs=1e-5)
        assert sum(row["sarcasm"].values()) == pytest.approx(1.0)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Why did\nI just love\n"))
    status, out, err = run_cli(capsys, "--model", str(checkpoints / "finetuned"), "--classifier", "joke", "-")
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and lines[1].endswith("\tI just love") and lines[0].startswith("joke ")
    assert "sarcasm" not in out


def test_classify_command_explains_a_checkpoint_without_classifiers(checkpoints, capsys):
    status, out, err = run_cli(capsys, "--model", str(checkpoints / "pretrained"), "Why did")
    assert status == 2
    assert "no classifiers: it is pretrained only" in err and out == ""


def test_classify_reads_any_bytes_from_standard_input(checkpoints, model, tokenizer, capsys, monkeypatch):
    data = bytes(np.random.default_rng(0).integers(0, 256, size=3000, dtype=np.uint8)) + b"\nCaf\xe9\n"
    lines = data.split(b"\n")[:-1]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="strict"))
    status, out, err = run_cli(capsys, "--model", str(checkpoints / "finetuned"), "--json", "--classifier", "joke", "-")
    assert status == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    texts = [line.decode("utf-8", errors="surrogateescape").rstrip("\r") for line in lines]
    texts = ["".join("\ufffd" if "\udc80" <= c <= "\udcff" else c for c in text) for text in texts]
    assert [row["text"] for row in rows] == texts and texts[-1] == "Caf\ufffd"
    expected = classify(model, tokenizer, texts, CLASSIFIER)
    assert [row["joke"] for row in rows] == [pytest.approx(probs, abs=1e-5) for probs in expected]


def test_classify_arguments_that_are_not_utf8(checkpoints, capsys):
    status, out, err = run_cli(capsys, "--model", str(checkpoints / "finetuned"), os.fsdecode(b"caf\xe9"))
    assert status == 0, err
    assert out.endswith("\tcaf\ufffd\n")


def test_classify_with_standard_input_closed_is_an_error(checkpoints, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)  # what Python makes of `seq2seq classify - <&-`
    status, out, err = run_cli(capsys, "--model", str(checkpoints / "finetuned"), "-")
    assert status == 2 and out == ""
    assert "standard input is closed" in err
