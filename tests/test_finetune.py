"""Fine-tuning: length-grouped batches, response-only loss, tone tokens, the command end to end, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_corpus, synthetic_play

from finetune.batching import Encoded, LengthGroupedBatches
from finetune.recipe import ExampleEncoder, FinetuneDataConfig
from seq2seq.checkpoint import save_pretrained
from seq2seq.model import ModelConfig, Transformer
from seq2seq.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "finetune" / "tiny.yaml"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.load(make_corpus(tmp_path_factory.mktemp("play"))[0])


def example(i: int, task: str, prompt: str, response: str, split: str, joke=None, sarcasm=None) -> dict:
    return {"id": f"{task}-{split}-{i}", "source": "unit", "task": task, "prompt": prompt, "response": response,
            "labels": {"joke": joke, "sarcasm": sarcasm}, "split": split}


def small_mixture(directory: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    words = "love night light window sun moon fair sweet death name rose".split()
    splits = {"train": [], "val": [], "test": []}
    for split, count in [("train", n), ("val", 6), ("test", 6)]:
        for i in range(count):
            line = " ".join(rng.choice(words, size=rng.integers(2, 12)))
            splits[split] += [
                example(i, "speaker", f"Who says: '{line}'?", str(rng.choice(["ROMEO", "JULIET"])), split),
                example(i, "is_sarcastic", f"Is this sarcastic? {line}", str(rng.choice(["yes", "no"])), split),
                example(i, "chat", f"Tell me about {line}", line.upper(), split, joke=bool(i % 2)),
            ]
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def encoded_examples(lengths: list[tuple[int, int]], task: str = "chat") -> list[Encoded]:
    return [Encoded([5] * s, [2] + [6] * (t - 2) + [3], task) for s, t in lengths]


def test_batches_respect_the_budget_and_group_by_length():
    rng = np.random.default_rng(0)
    lengths = [(int(rng.integers(4, 100)), int(rng.integers(3, 40))) for _ in range(400)]
    grouped = LengthGroupedBatches(encoded_examples(lengths), {}, max_examples=32, max_tokens=1024, min_examples=1,
                                   seed=0, pad_id=0)
    plan = grouped.plan(0)
    assert sorted(int(i) for b in plan for i in b) == list(range(400))  # every example once per epoch
    for batch in plan:
        assert len(batch) <= 32
        assert len(batch) * (max(lengths[i][0] for i in batch) + max(lengths[i][1] for i in batch)) <= 1024
    unsorted = LengthGroupedBatches(encoded_examples(lengths), {}, 32, 1024, 1, 0, 0)
    unsorted.src_lengths = unsorted.tgt_lengths = np.zeros(400, dtype=int)  # no sorting: random lengths
    unsorted._plans = {}
    assert grouped.padding_fraction() < 0.5 * unsorted.padding_fraction()


def test_task_weights_subsample_and_repeat():
    examples = encoded_examples([(5, 5)] * 10, "chat") + encoded_examples([(5, 5)] * 10, "speaker")
    batches = LengthGroupedBatches(examples, {"chat": 2.0, "speaker": 0.5}, 4, 10_000, 1, 0, 0)
    drawn = [examples[i].task for b in batches.plan(0) for i in b]
    assert drawn.count("chat") == 20 and drawn.count("speaker") == 5
    with pytest.raises(ValueError, match="jokes"):
        LengthGroupedBatches(examples, {"jokes": 1.0}, 4, 10_000, 1, 0, 0)


def test_a_step_batch_is_fixed_and_splits_over_processes():
    lengths = [(10 + i % 7, 5 + i % 3) for i in range(100)]
    batches = LengthGroupedBatches(encoded_examples(lengths), {}, 8, 4096, 4, seed=1, pad_id=0)
    again = LengthGroupedBatches(encoded_examples(lengths), {}, 8, 4096, 4, seed=1, pad_id=0)
    assert np.array_equal(batches.global_batch(17), again.global_batch(17))  # epoch 1 and beyond too
    whole = batches.global_batch(3)
    parts = [batches.batches(3, rank, 2, 2) for rank in range(2)]
    rows = sum(b.src_ids.shape[0] for p in parts for b in p)
    assert rows == len(whole)


def test_example_loss_unit_gives_every_example_the_same_weight():
    examples = encoded_examples([(6, 3), (6, 12)], "is_sarcastic") + encoded_examples([(6, 30)], "chat")
    tokens = LengthGroupedBatches(examples, {}, 8, 4096, 1, seed=0, pad_id=0)
    assert tokens.collate(examples).tgt_weights is None  # every token once: the plain per-token mean
    by_example = LengthGroupedBatches(examples, {}, 8, 4096, 1, seed=0, pad_id=0, loss_unit="example")
    batch = by_example.collate(examples)
    real = batch.tgt_out != 0
    per_example = (batch.tgt_weights * real).sum(1)
    torch.testing.assert_close(per_example, torch.ones(3))  # 2, 11 and 29 targets, one unit of weight each
    assert float(batch.loss_weight(pad_id=0)) == pytest.approx(3.0)
    weighted = LengthGroupedBatches(examples, {}, 8, 4096, 1, seed=0, pad_id=0, loss_unit="example",
                                    task_loss_weights={"chat": 2.0})
    torch.testing.assert_close((weighted.collate(examples).tgt_weights * real).sum(1), torch.tensor([1.0, 1, 2]))
    with pytest.raises(ValueError, match="loss_unit"):
        LengthGroupedBatches(examples, {}, 8, 4096, 1, seed=0, pad_id=0, loss_unit="sentence")
    with pytest.raises(ValueError, match="task_loss_weights names task 'jokes'"):
        LengthGroupedBatches(examples, {}, 8, 4096, 1, seed=0, pad_id=0, task_loss_weights={"jokes": 2.0})


def test_weighted_loss_is_the_mean_of_per_example_means():
    torch.manual_seed(0)
    examples = encoded_examples([(6, 3), (5, 9), (7, 20)], "chat")
    batch = LengthGroupedBatches(examples, {}, 8, 4096, 1, seed=0, pad_id=0, loss_unit="example").collate(examples)
    model = Transformer(ModelConfig(vocab_size=16, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                                    d_ff=32, dropout=0.0, max_seq_len=32, pad_id=0)).eval()
    weighted = model.loss(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.src_padding_mask,
                          batch.tgt_padding_mask, weights=batch.tgt_weights)
    each = [model.loss(*(t[i:i + 1] for t in (batch.src_ids, batch.tgt_in, batch.tgt_out)),
                       batch.src_padding_mask[i:i + 1], batch.tgt_padding_mask[i:i + 1]) for i in range(3)]
    torch.testing.assert_close(weighted, torch.stack(each).mean())
    unweighted = model.loss(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.src_padding_mask,
                            batch.tgt_padding_mask)
    assert not torch.allclose(weighted, unweighted)  # the long example dominates the per-token mean


def test_each_epoch_is_planned_once_when_stepping_through_them(monkeypatch):
    lengths = [(10 + i % 7, 5 + i % 3) for i in range(100)]
    batches = LengthGroupedBatches(encoded_examples(lengths), {}, 8, 4096, 1, seed=1, pad_id=0)
    fresh = LengthGroupedBatches(encoded_examples(lengths), {}, 8, 4096, 1, seed=1, pad_id=0)
    per_epoch = len(batches.plan(0))
    draws = []
    monkeypatch.setattr(batches, "draw", lambda rng, draw=batches.draw: draws.append(1) or draw(rng))
    steps = range(4 * per_epoch)  # into the fourth epoch
    for step in steps:
        assert np.array_equal(batches.global_batch(step), fresh.global_batch(step))
    assert len(draws) == 3  # epochs 1, 2 and 3, once each (epoch 0 was planned before the count began)


def test_encoder_reads_the_prompt_and_the_decoder_only_the_response(tokenizer):
    encoder = ExampleEncoder(tokenizer, FinetuneDataConfig(max_src_len=64, max_tgt_len=32), seed=0)
    rows = [example(0, "chat", "Tell me a joke", "Why not", "train", joke=True),
            example(1, "headline", "moon, sun", "area man sees moon", "train", sarcasm=True),
            example(2, "is_sarcastic", "Is it?", "no", "train", sarcasm=False)]
    first, second, third = encoder.encode(rows, with_shots=False)
    assert first.src == [tokenizer.task_id("chat"), tokenizer.tone_id("joke"), *tokenizer.encode("Tell me a joke"),
                         tokenizer.eos_id]
    assert first.tgt == [tokenizer.bos_id, *tokenizer.encode("Why not"), tokenizer.eos_id]
    assert second.src[:2] == [tokenizer.task_id("headline"), tokenizer.tone_id("sarcastic")]
    assert third.src[:2] == [tokenizer.task_id("is_sarcastic"), tokenizer.tone_id("plain")]
    batch = LengthGroupedBatches([first], {}, 4, 1000, 1, 0, tokenizer.pad_id).collate([first])
    assert batch.tgt_out[0].tolist() == [*tokenizer.encode("Why not"), tokenizer.eos_id]  # the loss's targets


def test_training_with_exemplars_puts_demonstrations_before_the_prompt(tokenizer):
    encoder = ExampleEncoder(tokenizer, FinetuneDataConfig(max_src_len=256, shots=2, shots_probability=1.0), seed=0)
    rows = [example(i, "speaker", f"Who says: 'line {i}'?", "ROMEO", "train") for i in range(5)]
    encoded = encoder.encode(rows, with_shots=True)
    for row, item in zip(rows, encoded):
        text = tokenizer.decode(item.src)
        assert text.endswith(row["prompt"]) and text.count("Who says") >= 2
        assert text.count(row["prompt"]) == 1  # never its own demonstration


def save_tiny_checkpoint(tokenizer, directory: Path) -> Path:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4, n_encoder_layers=1,
                                    n_decoder_layers=1, d_ff=64, dropout=0.0, max_seq_len=128,
                                    norm_placement="pre", positions="rotary"))
    return save_pretrained(model, directory, tokenizer)


def finetune(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune", "--config", str(TINY), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_finetune_command_end_to_end(tokenizer, tmp_path):
    pretrained = save_tiny_checkpoint(tokenizer, tmp_path / "pretrained")
    mixture = small_mixture(tmp_path / "mixture")
    out = tmp_path / "run"
    result = finetune(["--from", str(pretrained), f"output_dir={out}", f"data.mixture={mixture}",
                       "train.max_steps=12", "train.eval_every=6"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "padding" in result.stderr
    final = out / "final"
    assert {p.name for p in final.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.model",
                                                "inference.json"}
    inference = json.loads((final / "inference.json").read_text())
    assert inference["classifiers"]["sarcasm"]["task"] == "is_sarcastic" and inference["tones"]
    model_config = json.loads((final / "config.json").read_text())
    assert model_config["copy_attention"] and model_config["source_ngrams"] == [2]  # tiny.yaml adds both
    report = json.loads((out / "eval.json").read_text())
    rows = {(r["source"], r["task"]): r for r in report["test"]}
    assert set(rows) == {("unit", "speaker"), ("unit", "is_sarcastic"), ("unit", "chat")}
    assert set(rows[("unit", "is_sarcastic")]["model"]) == {"accuracy", "f1"}
    assert set(rows[("unit", "speaker")]["model"]) == {"exact_match", "token_f1"}
    assert {"majority", "random"} <= set(rows[("unit", "chat")])
    assert report["val_loss"] > 0 and 0 <= report["padding_fraction"] < 1
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in m for m in metrics) and any("loss" in m for m in metrics)


@pytest.mark.slow
def test_from_must_be_a_checkpoint(tmp_path):
    result = finetune(["--from", str(tmp_path), f"output_dir={tmp_path / 'run'}"])
    assert result.returncode == 2 and "config.json" in result.stderr


@pytest.mark.slow
def test_tokenizer_that_does_not_match_the_model_is_named(tokenizer, tmp_path):
    pretrained = save_tiny_checkpoint(tokenizer, tmp_path / "pretrained")
    Tokenizer.train([synthetic_play(20_000)], pretrained, tokenizer.vocab_size + 64)  # replaces tokenizer.model
    result = finetune(["--from", str(pretrained), f"output_dir={tmp_path / 'run'}"])
    assert result.returncode == 2 and "tokenizer.model" in result.stderr and "vocab_size" in result.stderr


@pytest.mark.slow
def test_mixture_without_training_examples_stops(tokenizer, tmp_path):
    pretrained = save_tiny_checkpoint(tokenizer, tmp_path / "pretrained")
    mixture = small_mixture(tmp_path / "mixture")
    (mixture / "train.jsonl").write_text("")
    result = finetune(["--from", str(pretrained), f"output_dir={tmp_path / 'run'}", f"data.mixture={mixture}"])
    assert result.returncode == 2 and "no training examples" in result.stderr


@pytest.mark.parametrize("override,field", [("model.source_ngrams=[2, 2]", "model.source_ngrams"),
                                            ("model.ngram_dropout=1.0", "model.ngram_dropout"),
                                            ("model.d_model=64", "model.d_model"),
                                            ("model.depth=3", "model.depth")])
def test_bad_ngram_settings_name_the_key(override, field):
    from finetune.recipe import load_config

    with pytest.raises(ValueError, match=field.replace(".", r"\.")) as error:
        load_config(TINY, [override])
    assert str(TINY) in str(error.value)
