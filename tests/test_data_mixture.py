"""The fine-tuning mixture: caps and weights, no leakage, determinism, the cache, and the written schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipelines.mixture import (
    MixtureConfig,
    MixtureSource,
    build_mixture,
    find_leaks,
    format_summary,
    load_mixture,
    load_mixture_config,
)
from data_pipelines.schema import FIELDS
from seq2seq.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "data" / "mixture-tiny.yaml"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_mixture(sample_raw_dir: Path, tiny_tokenizer: Tokenizer, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mixture")
    summary = build_mixture(load_mixture_config(TINY), sample_raw_dir, out, tiny_tokenizer, log=lambda _: None)
    return out, summary


def test_the_tiny_mixture_has_every_task_within_its_caps(tiny_mixture):
    out, summary = tiny_mixture
    config = load_mixture_config(TINY)
    splits = {split: load_mixture(out, split) for split in ("train", "val", "test")}
    for split, examples in splits.items():
        assert examples and all(list(e) == list(FIELDS) and e["split"] == split for e in examples)
        assert summary["examples"][split] == len(examples)
    tasks = {e["task"] for e in splits["train"]}
    assert tasks == {"speaker", "next_turn", "continue", "chat", "is_joke", "is_sarcastic", "headline"}
    caps = sum(source.cap for source in config.sources)
    assert len(splits["train"]) == caps  # every builder has more candidates than its cap here
    assert len({e["id"] for split in splits.values() for e in split}) == sum(map(len, splits.values()))


def test_no_val_or_test_prompt_or_response_appears_in_train(tiny_mixture):
    out, _ = tiny_mixture
    examples = [e for split in ("train", "val", "test") for e in load_mixture(out, split)]
    assert find_leaks(examples) == []


def test_find_leaks_catches_a_copied_prompt_but_not_shared_label_words():
    def example(i: int, split: str, prompt: str, response: str, task: str = "chat") -> dict:
        labels = {"joke": None, "sarcasm": None}
        return {
            "id": str(i),
            "source": "s",
            "task": task,
            "prompt": prompt,
            "response": response,
            "labels": labels,
            "split": split,
        }

    examples = [
        example(1, "train", "Is this a joke? A", "yes", "is_joke"),
        example(2, "test", "Is this a joke? B", "yes", "is_joke"),  # "yes" in both is not leakage
        example(3, "train", "How are you?", "Fine."),
        example(4, "val", "how are you", "Great!"),  # the same prompt after normalization
        example(5, "test", "Something new", "fine"),  # a train response, as an open response
    ]
    assert [(i, field) for i, field, _ in find_leaks(examples)] == [("4", "prompt"), ("5", "response")]


def test_the_build_removes_val_and_test_examples_whose_content_is_in_train(tmp_path: Path, tiny_tokenizer):
    rows = [
        {"prompt": "What is the capital of France?", "response": "Paris.", "task": "chat", "split": "train"},
        {"prompt": "what is the capital of france", "response": "It is Paris.", "task": "chat", "split": "test"},
        {"prompt": "Name a colour.", "response": "Paris.", "task": "chat", "split": "val"},
        {"prompt": "Name a fruit.", "response": "A pear.", "task": "chat", "split": "test"},
    ]
    config = MixtureConfig(
        name="leaky", sources=[MixtureSource(builder="jsonl", path=str(write_jsonl(tmp_path / "x.jsonl", rows)))]
    )
    summary = build_mixture(config, tmp_path, tmp_path / "out", tiny_tokenizer, log=lambda _: None)
    assert summary["examples"] == {"train": 1, "val": 0, "test": 1}
    assert summary["dropped"][f"jsonl ({tmp_path / 'x.jsonl'})"] == {
        "test content also in an earlier split": 1,
        "val content also in an earlier split": 1,
    }
    assert load_mixture(tmp_path / "out", "test")[0]["prompt"] == "Name a fruit."


def test_building_twice_gives_identical_files(tiny_mixture, sample_raw_dir: Path, tiny_tokenizer, tmp_path: Path):
    out, _ = tiny_mixture
    build_mixture(load_mixture_config(TINY), sample_raw_dir, tmp_path, tiny_tokenizer, log=lambda _: None)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_the_cache_makes_a_second_run_instant_and_identical(sample_raw_dir: Path, tiny_tokenizer, tmp_path: Path):
    config = load_mixture_config(
        TINY, ["sources=[{builder: shakespeare_speaker, cap: 50}, {builder: sarcasm_headline, cap: 50}]"]
    )
    cache, logs = tmp_path / "cache", []
    build_mixture(config, sample_raw_dir, tmp_path / "a", tiny_tokenizer, cache, log=logs.append)
    first = (tmp_path / "a" / "train.jsonl").read_bytes()
    logs.clear()
    build_mixture(config, sample_raw_dir, tmp_path / "a", tiny_tokenizer, cache, log=logs.append)
    assert logs == [f"  {tmp_path / 'a'} is up to date (same config, inputs, code and tokenizer)"]
    # another output with other caps rebuilds the mixture but reuses every builder's cached candidates
    config.sources[0].cap = 40
    build_mixture(config, sample_raw_dir, tmp_path / "b", tiny_tokenizer, cache, log=logs.append)
    assert all("(cached)" in line for line in logs[1:])
    # and the same config into a fresh folder, from the cache, writes the same bytes as the first run
    config.sources[0].cap = 50
    build_mixture(config, sample_raw_dir, tmp_path / "c", tiny_tokenizer, cache, log=lambda _: None)
    assert (tmp_path / "c" / "train.jsonl").read_bytes() == first


def test_caps_and_weights(sample_raw_dir: Path, tmp_path: Path):
    def train_ids(weight: float) -> list[str]:
        source = MixtureSource(builder="sarcasm_is_sarcastic", cap=100, eval_cap=7, weight=weight)
        build_mixture(MixtureConfig(sources=[source]), sample_raw_dir, tmp_path, log=lambda _: None)
        assert len(load_mixture(tmp_path, "val")) == len(load_mixture(tmp_path, "test")) == 7
        return [e["id"] for e in load_mixture(tmp_path, "train")]

    once, twice, half = train_ids(1.0), train_ids(2.0), train_ids(0.5)
    assert len(once) == 100 and len(twice) == 200 and len(half) == 50
    assert sorted(twice) == sorted(once + [f"{i}#2" for i in once])
    assert set(half) < set(once)


def test_the_summary_counts_sources_tasks_labels_and_lengths(tiny_mixture):
    out, summary = tiny_mixture
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["counts"]["jokes_qa / chat"]["train"] == 150
    assert summary["labels"]["chat / joke=true"]["train"] == 150
    assert summary["dropped"]["jokes_qa_punchline"]["offensive (word list)"] > 0
    lengths = summary["lengths_in_tokens"]["(all)"]
    assert 0 < lengths["prompt"]["p50"] <= lengths["prompt"]["p90"] <= lengths["prompt"]["max"]
    text = format_summary(summary)
    assert "jokes_qa / chat" in text and "offensive (word list)" in text and "p50/p90/p99/max" in text


def test_config_errors_name_the_problem(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources:\n  - {builder: wikipedia}\n")
    with pytest.raises(ValueError, match="builder 'wikipedia' is not one of"):
        load_mixture_config(bad)
    bad.write_text("name: x\ncaps: 3\nsources: []\n")
    with pytest.raises(ValueError, match="unknown config key 'caps'"):
        load_mixture_config(bad)
