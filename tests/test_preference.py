"""Preference tuning: the DPO and KTO losses on hand-computed numbers, the feedback file's round trip and its
bad lines."""

import json
import math

import pytest
import torch

from seq2seq.preference import (
    append_feedback,
    dpo_loss,
    feedback_record,
    kto_loss,
    kto_reference_point,
    read_feedback,
)
from seq2seq.records import InvalidRecordError, InvalidRecords


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_dpo_loss_is_the_formula():
    # beta 0.5; pair 1: policy (-3, -5), reference (-4, -4): margin 0.5 * (1 - (-1)) = 1
    loss, chosen, rejected = dpo_loss(torch.tensor([-3.0, -2.0]), torch.tensor([-5.0, -1.0]),
                                      torch.tensor([-4.0, -2.0]), torch.tensor([-4.0, -2.0]), beta=0.5)
    assert chosen.tolist() == [0.5, 0.0] and rejected.tolist() == [-0.5, 0.5]
    assert loss[0].item() == pytest.approx(-math.log(sigmoid(1.0)))
    assert loss[1].item() == pytest.approx(-math.log(sigmoid(-0.5)))


def test_kto_loss_is_the_formula():
    policy, reference = torch.tensor([-2.0, -3.0, -1.0]), torch.tensor([-3.0, -2.0, -1.5])
    z0 = kto_reference_point(torch.tensor([-4.0, -6.0]), torch.tensor([-5.0, -6.0]))  # mean(1, 0) = 0.5
    assert z0.item() == 0.5
    assert kto_reference_point(torch.tensor([-7.0]), torch.tensor([-5.0])).item() == 0.0  # clamped at 0
    loss, rewards = kto_loss(policy, reference, torch.tensor([True, False, True]), z0, beta=0.1,
                             desirable_weight=1.0, undesirable_weight=1.5)
    assert rewards.tolist() == pytest.approx([0.1, -0.1, 0.05])
    assert loss[0].item() == pytest.approx(1 - sigmoid(0.1 * (1.0 - 0.5)))
    assert loss[1].item() == pytest.approx(1.5 * (1 - sigmoid(0.1 * (0.5 - (-1.0)))))
    assert loss[2].item() == pytest.approx(1 - sigmoid(0.1 * (0.5 - 0.5)))


def test_feedback_round_trips_and_bad_lines_are_named(tmp_path):
    path = tmp_path / "feedback.jsonl"
    messages = [{"role": "user", "content": "Hello"}]
    append_feedback(path, feedback_record("Hi there", "abc", response="Good day", label=True, tone="plain"))
    append_feedback(path, feedback_record(messages, "abc", chosen="Hello!", rejected="I'm sorry."))
    records = read_feedback(path)
    assert [r.is_pair for r in records] == [False, True]
    assert records[0].label is True and records[0].tone == "plain" and records[1].prompt == messages
    assert records[1].chosen == "Hello!" and records[1].checkpoint_sha256 == "abc"
    with path.open("a") as handle:
        handle.write('{"prompt": "Hi", "chosen": "same", "rejected": "same"}\n')
        handle.write('{"prompt": "torn by a cr')  # a crash mid-write
    with pytest.raises(InvalidRecordError, match=r"feedback.jsonl:3: chosen equals rejected"):
        read_feedback(path)
    invalid = InvalidRecords(skip=True)
    assert len(read_feedback(path, invalid)) == 2
    assert sorted(row["reason"].split(" (")[0] for row in invalid.as_rows()) == [
        "chosen equals rejected: a pair needs two different answers", "malformed JSON"]
    with pytest.raises(ValueError, match="label"):
        feedback_record("Hi", "abc", response="x", label="yes")
    assert json.loads(path.read_text().splitlines()[0])["time"].endswith("Z")


# ---------------------------------------------------------------------------------------------------------
# Training: a preference flips, the reference stays


@pytest.fixture(scope="module")
def tokenizer():
    from helpers import train_tokenizer

    return train_tokenizer()


def fine_tuned(tokenizer, directory):
    from helpers import tiny_model

    from seq2seq.checkpoint import save_pretrained

    inference = {"task": "chat", "tones": True, "classifiers": {}}
    return save_pretrained(tiny_model(tokenizer), directory, tokenizer,
                           extra=lambda d: (d / "inference.json").write_text(json.dumps(inference)))


def answer_scores(checkpoint, tokenizer, prompt, answers):
    from seq2seq.checkpoint import load_model
    from seq2seq.prompting import build_source
    from seq2seq.scoring import continuation_log_probs

    model = load_model(checkpoint)
    source = build_source(tokenizer, prompt, task="chat", tone="plain", max_len=64).ids
    return continuation_log_probs(model, tokenizer, [source] * len(answers), [tokenizer.encode(a) for a in answers])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_training_on_b_preferred_to_a_flips_the_choice(method, tokenizer, tmp_path):
    from finetune.recipe import load_config, run_finetuning
    from seq2seq.files import sha256_file

    start = fine_tuned(tokenizer, tmp_path / "finetuned")
    weights_before = sha256_file(start / "model.safetensors")
    prompt, answers = "Why did the fox jump?", ["To get to the other side!", "Oh great, another Monday."]
    before = answer_scores(start, tokenizer, prompt, answers)
    preferred, other = (answers[1], answers[0]) if before[0] > before[1] else (answers[0], answers[1])
    feedback = tmp_path / "feedback.jsonl"
    for _ in range(8):
        if method == "dpo":
            append_feedback(feedback, feedback_record(prompt, "x", chosen=preferred, rejected=other))
        else:
            append_feedback(feedback, feedback_record(prompt, "x", response=preferred, label=True))
            append_feedback(feedback, feedback_record(prompt, "x", response=other, label=False))
    config = load_config(f"configs/finetune/{method}.yaml", [
        f"output_dir={tmp_path / 'run'}", f"pretrained={start}", f"data.feedback={feedback}", "train.max_steps=25",
        "train.lr=3e-3", "train.batch_size=4", "train.warmup_steps=0", "train.device=cpu", "train.eval_every=25",
        "train.save_every=25", "train.log_every=5", "preference.beta=0.5", "data.max_src_len=64",
        "data.max_tgt_len=24"])
    result = run_finetuning(config)
    assert result.exit_code() == 0
    after = answer_scores(tmp_path / "run" / "final", tokenizer, prompt, [preferred, other])
    assert after[0] > after[1], (before, after)
    # The reference is the starting checkpoint, frozen: its file is unchanged and the cached log-probabilities are
    # still what it gives.
    assert sha256_file(start / "model.safetensors") == weights_before
    cached = torch.load(tmp_path / "run" / "reference.pt", weights_only=True)
    assert {round(row[0], 3) for row in cached["train"]} <= {round(score, 3) for score in before}
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in logged if "loss" in row]
    expected = {"dpo": ["chosen_logps", "rejected_logps", "chosen_reward", "rejected_reward", "reward_margin",
                        "reward_accuracy", "kl"],
                "kto": ["desirable_logps", "undesirable_logps", "desirable_reward", "undesirable_reward",
                        "reward_margin", "reward_accuracy", "kl"]}[method]
    assert all(key in trained[-1] for key in expected), trained[-1]


def test_a_pretrained_only_start_and_an_empty_set_are_named(tokenizer, tmp_path):
    from helpers import tiny_model

    from finetune.recipe import load_config, run_finetuning
    from seq2seq.checkpoint import save_pretrained

    pretrained = save_pretrained(tiny_model(tokenizer), tmp_path / "pretrained", tokenizer)
    config = load_config("configs/finetune/dpo.yaml", [f"pretrained={pretrained}", f"output_dir={tmp_path}/r"])
    with pytest.raises(ValueError, match="pretrained only"):
        run_finetuning(config)
    start = fine_tuned(tokenizer, tmp_path / "finetuned")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    config = load_config("configs/finetune/dpo.yaml", [f"pretrained={start}", f"data.feedback={empty}",
                                                       f"output_dir={tmp_path}/r"])
    with pytest.raises(ValueError, match="empty.jsonl: 0 usable"):
        run_finetuning(config)
