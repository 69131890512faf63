"""What the tools do with input and settings they cannot use: a one-line error naming it, or a documented
replacement, never a traceback or a silent wrong answer (docs/reliability.md). The CLI is driven as a user
drives it: through main() for one-line errors, through real pipes where the bytes on standard input matter."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_corpus, tiny_model, train_tokenizer
from safetensors.torch import load_file, save_file

from seq2seq.checkpoint import save_pretrained
from seq2seq.cli import main
from seq2seq.config import load_yaml
from seq2seq.files import sha256_file

REPO = Path(__file__).resolve().parents[1]
SEQ2SEQ = [sys.executable, "-m", "seq2seq.cli"]

# -- input and bounds -------------------------------------------------------------------------------------------

INFERENCE = {"task": "chat", "tones": True,
             "classifiers": {"joke": {"task": "is_joke", "labels": {"true": "yes", "false": "no"}}}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """A fine-tuned-looking tiny checkpoint (max_seq_len 64), a rotary one, and broken copies of it."""
    root = tmp_path_factory.mktemp("reliability")
    tokenizer = train_tokenizer()
    inference = lambda d: (d / "inference.json").write_text(json.dumps(INFERENCE))  # noqa: E731
    model = tiny_model(tokenizer)
    save_pretrained(model, root / "good", tokenizer, extra=inference)
    save_pretrained(tiny_model(tokenizer, positions="rotary"), root / "rotary", tokenizer)
    with torch.no_grad():
        model.decoder.layers[0].feed_forward.w1.weight[0, 0] = float("nan")
    save_pretrained(model, root / "nan", tokenizer, extra=inference)
    save_pretrained(tiny_model(tokenizer), root / "int8", tokenizer, extra=inference)
    state = load_file(str(root / "int8" / "model.safetensors"))
    state["encoder.layers.0.feed_forward.w1.weight"] = state["encoder.layers.0.feed_forward.w1.weight"].to(torch.int8)
    save_file(state, str(root / "int8" / "model.safetensors"))
    save_pretrained(tiny_model(tokenizer), root / "huge", tokenizer, extra=inference)
    config = json.loads((root / "huge" / "config.json").read_text())
    (root / "huge" / "config.json").write_text(json.dumps({**config, "d_model": 2**40, "d_ff": 2**40}))
    return root


def one_line_error(capsys, argv: list[str]) -> str:
    """The error `argv` ends with: exit status 2 and exactly one line on standard error."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv", [
    ["generate", "--prompt", "Why did"],
    ["classify", "Why did"],
    ["eval", "--tasks", "speaker", "--shots", "0"],
])
def test_broken_weights_are_refused_naming_the_file_and_tensor(checkpoints, capsys, argv):
    command, rest = argv[0], argv[1:]
    for name, expected in [("nan", "tensor decoder.layers.0.feed_forward.w1.weight holds NaN or infinite values"),
                           ("int8", "tensor encoder.layers.0.feed_forward.w1.weight has dtype int8"),
                           ("huge", "config.json: describes a model of")]:
        err = one_line_error(capsys, [command, "--model", str(checkpoints / name), *rest])
        assert expected in err and str(checkpoints / name) in err


def test_chat_refuses_broken_weights_before_reading_a_line(checkpoints, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Why did\n"))
    err = one_line_error(capsys, ["chat", "--model", str(checkpoints / "nan")])
    assert "holds NaN or infinite values" in err


@pytest.mark.parametrize("positions", ["good", "rotary"])
def test_generation_settings_beyond_the_model_are_one_line_errors(checkpoints, capsys, positions):
    generate = ["generate", "--model", str(checkpoints / positions), "--prompt", "Why did", "--temperature", "0"]
    err = one_line_error(capsys, [*generate, "--max-tokens", str(10**11)])
    assert "max_new_tokens (--max-tokens) must be at most 63" in err
    err = one_line_error(capsys, [*generate, "--max-tokens", "64"])
    assert "must be at most 63" in err
    err = one_line_error(capsys, [*generate, "--num-beams", "100000"])
    assert "num_beams (--num-beams) must be at most 64" in err
    capsys.readouterr()
    assert main([*generate, "--max-tokens", "63", "--repetition-penalty", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["new_tokens"] <= 63


def test_eval_refuses_a_limit_below_one(checkpoints, capsys):
    err = one_line_error(capsys, ["eval", "--model", str(checkpoints / "good"), "--tasks", "speaker", "--limit", "0"])
    assert "--limit must be at least 1" in err


@pytest.mark.slow
@pytest.mark.parametrize("stdin_errors", [{"PYTHONIOENCODING": "utf-8:strict"}, {"LC_ALL": "C.UTF-8"}])
def test_piped_chat_answers_lines_that_are_not_utf8(checkpoints, stdin_errors):
    lines = [b"Why did \xff\xfe", b"/shots add  => ", b"caf\xe9 \xed\xa0\x80 (a surrogate, encoded)", b"Why did"]
    chat = [*SEQ2SEQ, "chat", "--model", str(checkpoints / "good"), "--max-tokens", "8", "--seed", "0"]
    result = subprocess.run(chat, input=b"\n".join(lines) + b"\n", capture_output=True, timeout=120, cwd=REPO,
                            env={**os.environ, **stdin_errors})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.decode("utf-8").count("\n") == 3  # one answer line per question
    assert "/shots add: an example needs both a prompt and a response" in result.stderr.decode()


@pytest.mark.slow
def test_classify_reads_random_bytes_and_refuses_a_closed_stdin(checkpoints):
    data = bytes(np.random.default_rng(1).integers(0, 256, size=20_000, dtype=np.uint8))
    classify = [*SEQ2SEQ, "classify", "--model", str(checkpoints / "good"), "-"]
    result = subprocess.run(classify, input=data, capture_output=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.decode("utf-8").count("\n") == data.count(b"\n") + 1  # the last line has no newline
    closed = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", *classify], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert closed.returncode == 2 and closed.stdout == ""
    assert closed.stderr == "seq2seq classify: error: standard input is closed: pipe the text in, one item per line\n"


@pytest.mark.slow
def test_data_build_names_lines_that_are_not_valid_text(tmp_path):
    train_tokenizer(tmp_path / "tokenizer")
    good = json.dumps({"prompt": "Tell me a joke.", "response": "Why did the chicken cross?", "task": "chat"})
    path = tmp_path / "examples.jsonl"
    path.write_bytes(b"\n".join([good.encode(), b'{"prompt": "caf\xe9", "response": "a", "task": "chat"}',
                                 good.replace("joke", "joke\\ud800").encode(), b""]))
    config = tmp_path / "extra.yaml"
    config.write_text(f"name: extra\nsources:\n  - {{builder: jsonl, path: {path}}}\n")
    build = [*SEQ2SEQ, "data", "build", "--config", str(config), "--data-dir", str(tmp_path / "data"),
             "--tokenizer", str(tmp_path / "tokenizer")]
    result = subprocess.run(build, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and f"{path}:2: bytes that are not UTF-8" in result.stderr
    assert result.stderr.count("\n") == 1
    result = subprocess.run([*build, "--skip-invalid"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "invalid records skipped: 2" in result.stdout
    assert "field 'prompt' is not valid Unicode" in result.stdout


# -- training runs ----------------------------------------------------------------------------------------------
# Tiny pretraining runs (dropout on, so the random state matters) killed, interrupted and resumed; each resumed run
# must log every value the uninterrupted one does (timings aside) and export the same weights, bit for bit.

PRETRAIN_TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
TIMINGS = ("tokens_per_s", "train_minutes")
KNOWN = {".lock", "checkpoints", "final", "metrics.jsonl", "run_config.json", "tensorboard"}
# A driver for kill points that random timing rarely hits: it kills itself (SIGKILL) right after the call named.
KILL_AFTER = """
import os, signal, sys
import seq2seq.checkpoint, seq2seq.trainer, torch
from seq2seq.cli import main
point, count = sys.argv.pop(1), [0]
def after(function, when, nth):
    def call(*args, **kwargs):
        result = function(*args, **kwargs)
        if when(*args):
            count[0] += 1
            if count[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return result
    return call
if point == "checkpoint":  # the second checkpoint's optimizer.pt is in its temporary folder
    torch.save = after(torch.save, lambda obj, path: str(path).endswith("optimizer.pt"), 2)
elif point == "prune":  # the first pruned checkpoint is renamed, not yet deleted
    seq2seq.trainer.os.replace = after(os.replace, lambda src, dst: str(dst).endswith(".pruned"), 1)
elif point == "export":  # the final model is half written (checkpoints call the trainer's own reference)
    seq2seq.checkpoint.write_model_files = after(seq2seq.checkpoint.write_model_files, lambda *args: True, 1)
elif point == "evaluation":  # Ctrl-C while the first evaluation runs
    import pretrain.recipe
    evaluate = pretrain.recipe.PretrainingTask.evaluate
    def interrupted(self, *args):
        if not count[0]:
            count[0] = 1
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(self, *args)
    pretrain.recipe.PretrainingTask.evaluate = interrupted
sys.exit(main(["pretrain", *sys.argv[1:]]))
"""


@pytest.fixture(scope="module")
def play(tmp_path_factory) -> list[str]:
    tokenizer, corpus = make_corpus(tmp_path_factory.mktemp("play"))
    return [f"data.corpus={corpus}", f"data.tokenizer={tokenizer}"]


def start_pretrain(output_dir: Path, play: list[str], *extra: str, point: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", KILL_AFTER, point] if point else [sys.executable, "-m", "pretrain"]
    args = ["--config", str(PRETRAIN_TINY), f"output_dir={output_dir}", *play, "model.dropout=0.1",
            "train.max_steps=24", "train.log_every=1", "train.eval_every=8", "train.save_every=3",
            "eval.sample_tokens=4", *extra]
    # SIGINT as a terminal delivers it, even where this test runs in the background with it ignored.
    return subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(process: subprocess.Popen, returncode: int = 0) -> str:
    _, err = process.communicate(timeout=300)
    assert process.returncode == returncode, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return err


def refused(capsys, argv: list[str]) -> str:
    """The error a run ends with: exit status 2 and one line, after what the recipe printed on starting."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("model: ") and err.count("\n") == 2, err
    return err.splitlines()[-1]


def logged(output_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if key not in TIMINGS} for row in rows]


def wait_for_rows(output_dir: Path, rows: int, process: subprocess.Popen) -> None:
    """Until metrics.jsonl holds `rows` lines (or the run has ended)."""
    path = output_dir / "metrics.jsonl"
    while process.poll() is None and not (path.is_file() and path.read_bytes().count(b"\n") >= rows):
        time.sleep(0.002)


@pytest.fixture(scope="module")
def reference(play, tmp_path_factory) -> tuple[list[dict], str]:
    """The uninterrupted run: every logged value, and the hash of its final weights."""
    out = tmp_path_factory.mktemp("reference")
    finish(start_pretrain(out, play))
    return logged(out), sha256_file(out / "final" / "model.safetensors")


def assert_resumes_exactly(output_dir: Path, play: list[str], reference: tuple[list[dict], str]) -> None:
    err = finish(start_pretrain(output_dir, play, "resume=latest"))
    assert (logged(output_dir), sha256_file(output_dir / "final" / "model.safetensors")) == reference, err[-2000:]
    assert {p.name for p in output_dir.iterdir()} <= KNOWN  # no temporary left behind
    assert all(p.name.startswith("step-") for p in (output_dir / "checkpoints").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("point", ["checkpoint", "prune", "export"])
def test_kill_9_while_writing_then_resume_equals_the_uninterrupted_run(play, reference, tmp_path, point):
    out = tmp_path / "run"
    finish(start_pretrain(out, play, point=point), -signal.SIGKILL)
    assert {p.name for p in out.iterdir()} - KNOWN or any(p.name.startswith(".")
                                                          for p in (out / "checkpoints").iterdir())
    assert_resumes_exactly(out, play, reference)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_the_uninterrupted_run(play, reference, tmp_path):
    rng = random.Random(7)
    for trial in range(2):
        out = tmp_path / f"run{trial}"
        for _ in range(trial + 1):  # the second trial also kills the resumed run
            process = start_pretrain(out, play, "resume=latest")
            wait_for_rows(out, rng.randrange(1, 30), process)
            time.sleep(rng.uniform(0, 0.02))
            process.kill()
            process.communicate()
        assert_resumes_exactly(out, play, reference)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["start-up", "training", "twice", "evaluation"])
def test_ctrl_c_at_any_moment_exits_promptly_and_resume_equals_the_uninterrupted_run(play, reference, tmp_path,
                                                                                      moment):
    out, rng = tmp_path / "run", random.Random(moment)
    process = start_pretrain(out, play, point="evaluation" if moment == "evaluation" else None)
    if moment == "start-up":  # imports, data, model, the run folder
        time.sleep(rng.uniform(0.05, 1.0))
    elif moment in ("training", "twice"):
        wait_for_rows(out, rng.randrange(2, 28), process)
    if moment != "evaluation":
        process.send_signal(signal.SIGINT)
    if moment == "twice":
        time.sleep(0.001)
        process.send_signal(signal.SIGINT)  # the second stops at once, without a new checkpoint
    sent = time.monotonic()
    err = finish(process, 130)
    assert time.monotonic() - sent < 30  # the TensorBoard writer once held an exit for its 2-minute flush
    assert "interrupted" in err
    if moment == "evaluation":  # the evaluation under way finishes and its step is saved
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000006", "step-0000008"]
    assert_resumes_exactly(out, play, reference)


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_is_refused(play, tmp_path, capsys):
    out = tmp_path / "run"
    first = start_pretrain(out, play, "train.max_steps=100000")
    wait_for_rows(out, 1, first)
    try:
        err = refused(capsys, ["pretrain", "--config", str(PRETRAIN_TINY), f"output_dir={out}", *play,
                               "resume=latest"])
        assert f"output_dir {out} is in use by another run (pid {first.pid} on" in err
    finally:
        first.send_signal(signal.SIGINT)
    finish(first, 130)


@pytest.mark.slow
def test_a_run_refuses_another_runs_folder_and_a_changed_config(play, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain = ["pretrain", "--config", str(PRETRAIN_TINY), f"output_dir={out}", *play, "train.max_steps=3",
                "train.save_every=3", "eval.sample_tokens=1"]
    assert main(pretrain) == 0
    err = refused(capsys, pretrain)
    assert f"output_dir {out} holds another run (checkpoints/step-0000003, final)" in err
    err = refused(capsys, [*pretrain, "resume=latest", "model.d_model=32", "model.activation=gelu"])
    assert "model.activation 'relu' -> 'gelu'; model.d_model 64 -> 32" in err
    assert "resume_allow_changes=[model.activation,model.d_model]" in err
    (out / "checkpoints" / "step-0000003" / "trainer_state.json").write_text('{"step": 3,')
    err = refused(capsys, [*pretrain, "resume=latest"])
    assert "step-0000003/trainer_state.json: unreadable" in err
    assert main([*pretrain, "--overwrite"]) == 0


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcde", "bcdef")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")  # 9**6 strings once expanded
    started = time.monotonic()
    with pytest.raises(ValueError, match=f"{bomb}: not valid YAML: alias \\*a is not allowed"):
        load_yaml(bomb)
    err = one_line_error(capsys, ["pretrain", "--config", str(bomb)])
    assert "alias *a is not allowed in a config" in err and time.monotonic() - started < 2


def test_an_empty_val_split_is_an_error_not_a_val_loss_of_zero(tmp_path, capsys):
    tokenizer = train_tokenizer()
    save_pretrained(tiny_model(tokenizer), tmp_path / "pretrained", tokenizer)
    mixture = tmp_path / "mixture"
    mixture.mkdir()
    example = {"id": "1", "source": "unit", "task": "chat", "prompt": "Why did", "response": "To get across.",
               "labels": {"joke": None, "sarcasm": None}, "split": "train"}
    (mixture / "train.jsonl").write_text(json.dumps(example) + "\n")
    (mixture / "val.jsonl").write_text("")
    err = one_line_error(capsys, ["finetune", "--config", str(REPO / "configs" / "finetune" / "tiny.yaml"), "--from",
                                  str(tmp_path / "pretrained"), f"output_dir={tmp_path / 'run'}",
                                  f"data.mixture={mixture}"])
    assert f"{mixture}/val.jsonl has no examples" in err


def test_ctrl_c_during_the_imports_is_held_until_they_finish(tmp_path, monkeypatch, capsys):
    """A library that swallows the KeyboardInterrupt raised inside its import (numpy's, once, went on to recurse
    without end) never sees it: the CLI raises it after the imports."""
    (tmp_path / "swallowing.py").write_text(
        "import os, signal, time\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.01)\n"
        "except BaseException:\n"
        "    pass\n"
        "def register(subparsers):\n"
        "    subparsers.add_parser('swallow').set_defaults(run=lambda args: 0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("seq2seq.cli.COMMANDS", {"swallow": "swallowing"})
    assert main(["swallow"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
