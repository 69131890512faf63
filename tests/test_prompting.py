"""The source layout `[task] [tone] <shots> <prompt> </s>`, cut from the left, and inference.json."""

from __future__ import annotations

import json

import pytest
from helpers import train_tokenizer

from seq2seq.prompting import PRETRAINING_TASK, InferenceSpec, build_source, render_with_shots


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def test_layout_markers_prompt_and_eos(tokenizer):
    source = build_source(tokenizer, "Why did the chicken", task="chat", tone="joke", max_len=64)
    assert source.ids == [tokenizer.task_id("chat"), tokenizer.tone_id("joke"),
                          *tokenizer.encode("Why did the chicken"), tokenizer.eos_id]
    assert source.truncated_tokens == 0
    bare = build_source(tokenizer, "Why did the chicken", task=None, tone=None, max_len=64)
    assert bare.ids == [*tokenizer.encode("Why did the chicken"), tokenizer.eos_id]


def test_shots_come_before_the_prompt_as_lm_eval_renders_them(tokenizer):
    shots = [("Why did the chicken cross the road?", "To get to the other side!"), ("Monday?", "Oh great.")]
    text = render_with_shots("Why did", shots)
    assert text == "Why did the chicken cross the road? To get to the other side!\n\nMonday? Oh great.\n\nWhy did"
    assert render_with_shots("Q", [], instruction="Answer.") == "Answer.\n\nQ"
    source = build_source(tokenizer, "Why did", task="chat", tone=None, shots=shots, max_len=128)
    assert source.ids == [tokenizer.task_id("chat"), *tokenizer.encode(text), tokenizer.eos_id]


def test_a_long_source_is_cut_from_the_left_keeping_the_markers_and_eos(tokenizer):
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    text = tokenizer.encode(prompt)
    source = build_source(tokenizer, prompt, task="chat", tone="sarcastic", max_len=20)
    assert len(source.ids) == 20
    assert source.ids[:2] == [tokenizer.task_id("chat"), tokenizer.tone_id("sarcastic")]
    assert source.ids[2:-1] == text[-17:]
    assert source.ids[-1] == tokenizer.eos_id
    assert source.truncated_tokens == len(text) - 17
    # The oldest shot goes first.
    shots = [("first shot", "a"), ("second shot", "b")]
    full = tokenizer.encode(render_with_shots("Why did", shots))
    kept = build_source(tokenizer, "Why did", task=None, tone=None, shots=shots, max_len=len(full) - 3 + 1)
    assert kept.ids == [*full[3:], tokenizer.eos_id]
    assert kept.truncated_tokens == 3


def test_bad_task_tone_or_length_raise(tokenizer):
    with pytest.raises(ValueError, match="unknown task"):
        build_source(tokenizer, "x", task="no_such_task", tone=None, max_len=10)
    with pytest.raises(ValueError, match="unknown tone"):
        build_source(tokenizer, "x", task=None, tone="angry", max_len=10)
    with pytest.raises(ValueError, match="max_len"):
        build_source(tokenizer, "x", task="chat", tone="plain", max_len=2)


def test_pretraining_task_is_a_tokenizer_task(tokenizer):
    assert PRETRAINING_TASK in tokenizer.tasks


def test_inference_spec_defaults_without_the_file(tmp_path):
    spec = InferenceSpec.load(tmp_path)
    assert (spec.task, spec.tones, spec.classifiers, spec.fine_tuned) == (PRETRAINING_TASK, False, {}, False)


def test_inference_spec_reads_the_file(tmp_path):
    data = {"task": "chat", "tones": True,
            "classifiers": {"joke": {"task": "is_joke", "labels": {"true": "yes", "false": "no"}}}}
    (tmp_path / "inference.json").write_text(json.dumps(data))
    spec = InferenceSpec.load(tmp_path)
    assert (spec.task, spec.tones, spec.fine_tuned) == ("chat", True, True)
    assert spec.classifiers["joke"]["labels"] == {"true": "yes", "false": "no"}


@pytest.mark.parametrize("content,message", [("{oops", "corrupt JSON"), ('{"tones": "yes"}', "tones"),
                                             ('{"task": 3}', "task"), ('{"colour": 1}', "colour"),
                                             ('{"classifiers": {"joke": {"task": "is_joke"}}}', "classifiers.joke")])
def test_a_bad_inference_file_is_named(tmp_path, content, message):
    (tmp_path / "inference.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        InferenceSpec.load(tmp_path)
