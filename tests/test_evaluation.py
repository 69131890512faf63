"""The few-shot harness: rendering, demonstration sampling, choice scores, normalisation, truncation, task files."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_corpus

from seq2seq.checkpoint import save_pretrained
from seq2seq.evaluation import (
    Item,
    TaskConfig,
    encode_context,
    evaluate_task,
    load_items,
    load_task,
    render_context,
    run_eval,
    sample_demonstrations,
)
from seq2seq.model import ModelConfig, Transformer
from seq2seq.prompting import InferenceSpec
from seq2seq.scoring import continuation_log_probs
from seq2seq.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.load(make_corpus(tmp_path_factory.mktemp("play"))[0])


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4, n_encoder_layers=1,
                                   n_decoder_layers=1, d_ff=64, dropout=0.0, max_seq_len=64)).eval()


def task(**overrides) -> TaskConfig:
    return TaskConfig(**{"name": "t", "data": "unused.jsonl", "metric": "loglikelihood", "choices": ["yes", "no"],
                         **overrides})


def test_context_follows_lm_eval_conventions():
    demos = [Item("Is it? a", "yes", {}), Item("Is it? b", "no", {})]
    text = render_context(task(instruction="Answer yes or no."), demos, Item("Is it? c", "yes", {}))
    assert text == "Answer yes or no.\n\nIs it? a yes\n\nIs it? b no\n\nIs it? c"
    assert render_context(task(), [], Item("Q", "A", {})) == "Q"


def test_demonstrations_are_seeded_and_never_the_query():
    demos = [Item(f"q{i}", f"a{i}", {}) for i in range(6)]
    query = demos[2]
    draws = [sample_demonstrations(demos, query, 5, np.random.default_rng(7)) for _ in range(2)]
    assert draws[0] == draws[1] and len(draws[0]) == 5
    assert query not in draws[0]
    for seed in range(20):
        assert query not in sample_demonstrations(demos, query, 5, np.random.default_rng(seed))
    assert sample_demonstrations(demos, query, 0, np.random.default_rng(0)) == []


def test_acc_norm_divides_by_characters(model, tokenizer, tmp_path):
    # Two choices whose summed log-probs favour the short one, per character the long one.
    rows = [{"prompt": "q", "response": "a", "split": "test"}, {"prompt": "r", "response": "a", "split": "train"}]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = task(data=str(path), choices=["a", "a a a a a a a a"])
    result = evaluate_task(model, tokenizer, config, [0], None, 0, InferenceSpec(), 64)[0]
    source = encode_context(config, [], Item("q", "a", {}), tokenizer, [tokenizer.task_id("prefix_lm")], 64).ids
    short, long = continuation_log_probs(model, tokenizer, [source, source],
                                         [tokenizer.encode(c) for c in config.choices])
    assert result["metrics"]["acc"]["value"] == float(short > long)
    assert result["metrics"]["acc_norm"]["value"] == float(short / 1 > long / len(config.choices[1]))


def test_demonstrations_are_dropped_before_the_query_is_cut(tokenizer):
    demos = [Item("word " * 20, "yes", {}) for _ in range(3)]
    query = Item("light " * 10, "no", {})
    prefix = [tokenizer.task_id("prefix_lm")]
    roomy = encode_context(task(), demos, query, tokenizer, prefix, 400)
    assert roomy.demos_dropped == 0 and roomy.truncated_tokens == 0
    one_demo = len(tokenizer.encode(render_context(task(), demos[:1], query)))
    tight = encode_context(task(), demos, query, tokenizer, prefix, one_demo + 2)  # room for one demonstration
    assert tight.demos_dropped == 2 and tight.truncated_tokens == 0
    assert len(tight.ids) == one_demo + 2
    cut = encode_context(task(), demos, query, tokenizer, prefix, 6)
    assert cut.demos_dropped == 3 and cut.truncated_tokens > 0 and len(cut.ids) == 6
    assert cut.ids[0] == prefix[0] and cut.ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(cut.ids[1:-1]) in query.question  # the end of the query survives


@pytest.mark.slow
def test_user_task_file_runs_end_to_end(model, tokenizer, tmp_path):
    checkpoint = tmp_path / "model"
    save_pretrained(model, checkpoint, tokenizer)
    data = tmp_path / "my_data.jsonl"
    rows = [{"question": f"Is {w} a fruit?", "label": "yes" if w in ("apple", "pear") else "no", "part": p}
            for w, p in [("apple", "eval"), ("stone", "eval"), ("pear", "demo"), ("chair", "demo"), ("plum", "demo")]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task_file = tmp_path / "fruit.yaml"
    task_file.write_text(f"name: fruit\ndata: {data}\nmetric: loglikelihood\nchoices: [\"yes\", \"no\"]\n"
                         "fields: {prompt: question, response: label, split: part}\n"
                         "query_split: eval\ndemo_split: demo\ninstruction: Answer yes or no.\n")
    out = tmp_path / "results" / "fruit.json"
    result = subprocess.run([sys.executable, "-m", "seq2seq.cli", "eval", "--model", str(checkpoint), "--tasks",
                             str(task_file), "--shots", "0,1,2", "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| fruit | 2 | acc |" in result.stdout
    report = json.loads(out.read_text())
    assert [r["shots"] for r in report["results"]] == [0, 1, 2]
    assert all(r["n"] == 2 for r in report["results"])
    assert len(report["checkpoint_sha256"]) == 64 and report["model_config"]["d_model"] == 32
    assert report["settings"]["shots"] == [0, 1, 2]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.with_suffix(".md").read_text().startswith("| task |")


def test_malformed_task_file_names_the_bad_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: d.jsonl\nmetric: loglikelihood\nchoices: [a, b]\ntemplte: '{prompt}'\n")
    with pytest.raises(ValueError, match="bad.yaml.*templte"):
        load_task(str(bad))
    bad.write_text("name: x\ndata: d.jsonl\nmetric: accuracy\n")
    with pytest.raises(ValueError, match="bad.yaml.*metric"):
        load_task(str(bad))
    bad.write_text("name: x\ndata: d.jsonl\nmetric: loglikelihood\n")
    with pytest.raises(ValueError, match="choices"):
        load_task(str(bad))


def test_builtin_tasks_load():
    for name in ["speaker", "next_turn", "sarcasm", "joke", "dialogue"]:
        assert load_task(name).name == name
    with pytest.raises(ValueError, match="unknown task"):
        load_task("nonexistent")


@pytest.mark.parametrize("template", ["{0}", "{}", "Q: {prompt.foo}", "{prompt", "Q}", "{prompt!x}"])
def test_a_template_that_is_not_made_of_field_names_is_refused_naming_the_task_file(tmp_path, template):
    bad = tmp_path / "bad.yaml"
    head = "name: x\ndata: d.jsonl\nmetric: loglikelihood\nchoices: [a, b]\n"
    bad.write_text(f"{head}template: {json.dumps(template)}\n")
    with pytest.raises(ValueError, match=rf"bad\.yaml: task x: template {re.escape(repr(template))}"):
        load_task(str(bad))
    bad.write_text(f"{head}answer: {json.dumps(template)}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: task x: answer"):
        load_task(str(bad))


@pytest.mark.parametrize(("row", "template", "message"), [
    ({"prompt": "q", "response": "a"}, "{question}", r"items\.jsonl: row 1 has no field 'question' used by task t"),
    ({"prompt": "q", "response": "a"}, "{prompt[5]}", r"items\.jsonl: row 1: task t's template '\{prompt\[5\]\}'"),
    ({"prompt": "q", "response": "a"}, "{prompt:d}", r"items\.jsonl: row 1: task t's template '\{prompt:d\}'"),
    ({"prompt": "q\ud800", "response": "a"}, "{prompt}", r"items\.jsonl: row 1: not valid Unicode"),
])
def test_a_row_that_cannot_become_an_item_is_named(tmp_path, row, template, message):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({**row, "split": "test"}) + "\n")  # json.dumps spells a lone surrogate "\ud800"
    with pytest.raises(ValueError, match=message):
        load_items(task(data=str(path), template=template))


def test_eval_limit_must_be_at_least_one(tmp_path):
    with pytest.raises(ValueError, match="--limit must be at least 1"):  # before the checkpoint is read
        run_eval(str(tmp_path / "no-checkpoint"), ["speaker"], [0], 0, 1234, None)


def test_a_generation_task_longer_than_the_model_can_write_is_refused_before_it_runs(model, tokenizer, tmp_path):
    save_pretrained(model, tmp_path / "model", tokenizer)
    task_file = tmp_path / "long.yaml"
    task_file.write_text("name: long\ndata: unused.jsonl\nmetric: generate\ngeneration: {max_new_tokens: 64}\n")
    with pytest.raises(ValueError, match=r"task long: generation\.max_new_tokens 64 .*\(63: its max_seq_len - 1\)"):
        run_eval(str(tmp_path / "model"), [str(task_file)], [0], None, 1234, None)


def test_eval_text_reports_nats_and_bits_per_character(model, tokenizer, tmp_path):
    from seq2seq.evaluation import run_eval, text_task

    checkpoint = tmp_path / "model"
    save_pretrained(model, checkpoint, tokenizer)
    text = tmp_path / "poem.txt"
    text.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 5)
    report = run_eval(str(checkpoint), [], [0], None, 0, tmp_path / "ppl.json", "cpu",
                      extra_tasks=(text_task(str(text), None, 16),))
    row = report["results"][0]
    assert row["task"] == "poem.txt" and row["chars"] == len(text.read_text()) and row["n"] > 0
    metrics = {name: stats["value"] for name, stats in row["metrics"].items()}
    assert metrics["bits_per_char"] == pytest.approx(metrics["nats_per_char"] / np.log(2))
    assert metrics["nats_per_token"] == pytest.approx(metrics["nats_per_char"] * row["chars"] / row["n"])
    assert (tmp_path / "ppl.md").read_text().count("poem.txt") == 3
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run_eval(str(checkpoint), [], [0], None, 0, None, "cpu")
