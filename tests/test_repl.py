"""`seq2seq chat` and `seq2seq generate`, driven as a user would: through pipes (one answer line per question)
and through a pseudo-terminal (streamed answers, Ctrl-C stops an answer, Ctrl-D leaves, readline history).
Answers are compared with `generate()` run here on the same checkpoint."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import PROMPTS, tiny_model, train_tokenizer

from seq2seq.checkpoint import save_pretrained
from seq2seq.classify import classify
from seq2seq.cli import main
from seq2seq.generation import GenerationConfig, generate
from seq2seq.prompting import PRETRAINING_TASK, InferenceSpec, build_conversation_source, build_source
from seq2seq.repl import CHAT_DEFAULTS, ChatSession, one_line

INFERENCE = {"task": "chat", "tones": True,
             "classifiers": {"joke": {"task": "is_joke", "labels": {"true": "yes", "false": "no"}},
                             "sarcasm": {"task": "is_sarcastic", "labels": {"true": "yes", "false": "no"}}}}
GREEDY = dataclasses.replace(CHAT_DEFAULTS, temperature=0.0, max_new_tokens=12)
CHAT = [sys.executable, "-m", "seq2seq.cli", "chat"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, model, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("chat")
    save_pretrained(model, root / "pretrained", tokenizer)
    save_pretrained(model, root / "finetuned", tokenizer,
                    extra=lambda d: (d / "inference.json").write_text(json.dumps(INFERENCE)))
    rambling = tiny_model(tokenizer, max_seq_len=100_001)  # sinusoidal positions: no weights per position
    with torch.no_grad():
        rambling.output_proj.weight[tokenizer.eos_id] = -10 * rambling.output_proj.weight.abs().max()
    save_pretrained(rambling, root / "rambling", tokenizer)  # it never writes </s>: answers to interrupt
    return root


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "HOME": str(tmp_path), "TERM": "dumb"}


def answer(model, tokenizer, prompt: str, config: GenerationConfig = GREEDY, task: str = PRETRAINING_TASK,
           tone: str | None = None, shots=()) -> str:
    source = build_source(tokenizer, prompt, task=task, tone=tone, shots=shots, max_len=model.config.max_seq_len)
    return generate(model, tokenizer, [source.ids], config)[0].text


def converse(model, tokenizer, turns: list[str], tone: str) -> str:
    """The greedy answer to the last of `turns` (user and assistant alternating) as a chat checkpoint reads it."""
    messages = [{"role": "user" if (len(turns) - i) % 2 else "assistant", "content": text}
                for i, text in enumerate(turns)]
    source = build_conversation_source(tokenizer, messages, task="chat", tone=tone, max_len=model.config.max_seq_len)
    return generate(model, tokenizer, [source.ids], GREEDY)[0].text


def chat(model_dir: Path, lines: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CHAT, "--model", str(model_dir), "--temperature", "0", "--max-tokens", "12", *args],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, env=env, timeout=120)


# ---------------------------------------------------------------------------------------------------------
# Pipes: one line per answer on stdout, everything else on stderr


@pytest.mark.slow
def test_piped_chat_answers_applies_set_and_survives_bad_commands(checkpoints, model, tokenizer, env):
    lines = ["Why did", "/set top_k abc", "/set compile maybe", "/frobnicate", "/set top_p 7", "/set max_tokens 3",
             PROMPTS[1], "/tone joke", "", "/set temperature 1.0", "/set seed 5", "I just love", "/quit",
             "never answered"]
    result = chat(checkpoints / "pretrained", lines, env)
    assert result.returncode == 0, result.stderr
    sampled = dataclasses.replace(GREEDY, max_new_tokens=3, temperature=1.0, seed=5)
    assert result.stdout.split("\n") == [
        one_line(answer(model, tokenizer, "Why did")),
        one_line(answer(model, tokenizer, PROMPTS[1], dataclasses.replace(GREEDY, max_new_tokens=3))),
        "",  # a blank line keeps its place
        one_line(answer(model, tokenizer, "I just love", sampled)),
        "",
    ]
    assert sampled.seed == 5 and answer(model, tokenizer, "I just love", sampled) != answer(
        model, tokenizer, "I just love", dataclasses.replace(sampled, seed=6)), "the seed should matter here"
    errors = result.stderr
    assert "error: /set top_k: expected an integer, got 'abc'" in errors
    assert "error: /set compile: expected on or off, got 'maybe'" in errors
    assert "error: unknown command /frobnicate" in errors
    assert "error: top_p must be in (0, 1]" in errors
    assert "no tone training" in errors
    assert "max_tokens = 3" in errors


@pytest.mark.slow
def test_piped_chat_with_a_fine_tuned_checkpoint(checkpoints, model, tokenizer, env, tmp_path):
    prompt = PROMPTS[2]
    plain = answer(model, tokenizer, prompt, task="chat", tone="plain")
    joke = answer(model, tokenizer, prompt, task="chat", tone="joke")
    assert plain != joke, "the tone token should change this answer"
    shots = [("Why did the chicken cross the road?", "To get to the other side!")]
    probabilities = {name: classify(model, tokenizer, [prompt], classifier)[0]["true"]
                     for name, classifier in INFERENCE["classifiers"].items()}
    best = max(probabilities, key=probabilities.get)
    auto_tone = {"joke": "joke", "sarcasm": "sarcastic"}[best] if probabilities[best] > 0.5 else "plain"
    transcript = tmp_path / "transcript.jsonl"
    lines = [prompt, "/tone joke", prompt, "/tone auto", prompt, "/tone plain", "/classify " + prompt,
             "/shots add Why did the chicken cross the road? => To get to the other side!", "/shots list", prompt,
             "/history", f"/save {transcript}", "/show"]
    result = chat(checkpoints / "finetuned", lines, env)
    assert result.returncode == 0, result.stderr
    # A chat checkpoint reads the conversation so far: each question after the first comes after the last turns.
    joke = converse(model, tokenizer, [prompt, plain, prompt], "joke")
    auto = converse(model, tokenizer, [prompt, plain, prompt, joke, prompt], auto_tone)
    assert result.stdout.split("\n") == [one_line(plain), one_line(joke), one_line(auto),
                                         one_line(answer(model, tokenizer, prompt, task="chat", tone="plain",
                                                         shots=shots)), ""]
    errors = result.stderr
    assert f"[tone: {auto_tone} (joke {probabilities['joke']:.2f}  sarcasm {probabilities['sarcasm']:.2f})]" in errors
    assert f"joke {probabilities['joke']:.2f}  sarcasm {probabilities['sarcasm']:.2f}" in errors
    assert "1. Why did the chicken cross the road? => To get to the other side!" in errors
    assert "tone plain  task chat  few-shot examples 1" in errors
    saved = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert [(s["prompt"], s["answer"], s["tone"]) for s in saved] == [
        (prompt, plain, "plain"), (prompt, joke, "joke"), (prompt, saved[2]["answer"], auto_tone),
        (prompt, saved[3]["answer"], "plain")]


def test_a_long_question_is_cut_from_the_left_with_a_notice(checkpoints, model, tokenizer, monkeypatch, capsys):
    prompt = "The quick brown fox jumps over the lazy dog. " * 12
    monkeypatch.setattr(sys, "stdin", io.StringIO(prompt + "\n"))  # not a terminal: one line per answer
    assert main(["chat", "--model", str(checkpoints / "pretrained"), "--temperature", "0", "--max-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    assert "[input cut: the first" in err and "64-token source" in err
    assert out == one_line(answer(model, tokenizer, prompt)) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Input that is not UTF-8, and settings the model cannot take


def stdin_bytes(data: bytes) -> io.TextIOWrapper:
    """Standard input as Python opens it under a UTF-8 locale (strict: bad bytes would raise on reading)."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="strict")


def test_piped_bytes_that_are_not_utf8_become_replacement_characters(checkpoints, model, tokenizer, monkeypatch,
                                                                     capsys):
    monkeypatch.setattr(sys, "stdin", stdin_bytes(b"Why did \xff\xfe\nCaf\xe9 au lait\r\n"))
    assert main(["chat", "--model", str(checkpoints / "pretrained"), "--temperature", "0", "--max-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    assert out.split("\n") == [one_line(answer(model, tokenizer, "Why did \ufffd\ufffd")),
                                one_line(answer(model, tokenizer, "Caf\ufffd au lait")), ""], err


def test_generate_prompt_with_bytes_that_are_not_utf8(checkpoints, model, tokenizer, capsys):
    prompt = os.fsdecode(b"caf\xe9")  # how Python hands over an argument that is not UTF-8: "caf\udce9"
    assert main(["generate", "--model", str(checkpoints / "pretrained"), "--prompt", prompt, "--temperature", "0",
                 "--max-tokens", "12", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prompt"] == "caf\ufffd" and printed["text"] == answer(model, tokenizer, "caf\ufffd")


def test_chat_with_standard_input_closed_is_an_error(checkpoints, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", None)  # what Python makes of `seq2seq chat <&-`
    assert main(["chat", "--model", str(checkpoints / "pretrained")]) == 2
    assert "standard input is closed" in capsys.readouterr().err


def test_max_tokens_is_bounded_by_the_models_positions(checkpoints, model, tokenizer, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/show\n"))
    assert main(["chat", "--model", str(checkpoints / "pretrained")]) == 0
    assert "max_tokens 63 " in capsys.readouterr().err  # the default, 128, cut to what max_seq_len 64 allows
    assert main(["chat", "--model", str(checkpoints / "pretrained"), "--max-tokens", str(10**11)]) == 2
    assert "max_new_tokens (--max-tokens) must be at most 63" in capsys.readouterr().err
    session = ChatSession(model, tokenizer, InferenceSpec(), GREEDY)
    with pytest.raises(ValueError, match="must be at most 63 .*got 100000000000"):
        session.command(f"/set max_tokens {10**11}")
    assert session.config == GREEDY
    assert session.command("/set max_tokens 63") == "max_tokens = 63"


@pytest.mark.parametrize("line", ["/shots add  => ", "/shots add Why did =>", "/shots add => To get there"])
def test_shots_add_refuses_an_empty_example(model, tokenizer, line):
    session = ChatSession(model, tokenizer, InferenceSpec(), GREEDY)
    with pytest.raises(ValueError, match="needs both a prompt and a response"):
        session.command(line)
    assert session.shots == []


@pytest.mark.slow
def test_generate_answers_once(checkpoints, model, tokenizer, env, capsys):
    arguments = ["generate", "--model", str(checkpoints / "pretrained"), "--prompt", "Why did", "--temperature", "0",
                 "--max-tokens", "12"]
    result = subprocess.run([sys.executable, "-m", "seq2seq.cli", *arguments], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == answer(model, tokenizer, "Why did") + "\n"
    capsys.readouterr()
    assert main([*arguments, "--num-beams", "3", "--json"]) == 0
    beams = json.loads(capsys.readouterr().out)
    assert beams["text"] == answer(model, tokenizer, "Why did", dataclasses.replace(GREEDY, num_beams=3))
    assert beams["finish_reason"] in ("eos", "length") and beams["new_tokens"] > 0
    assert main([*arguments, "--num-beams", "3", "--temperature", "0.5"]) == 2
    assert "beam search does not sample" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# A pseudo-terminal: streaming, Ctrl-C, Ctrl-D, history


class Terminal:
    """A child process on a pseudo-terminal it has as its controlling terminal, so that writing Ctrl-C (\\x03)
    makes the terminal send it SIGINT, as a keyboard would."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execve(argv[0], argv, env)
        self.output = ""

    def read_until(self, text: str, timeout: float = 60.0) -> str:
        """Everything read up to and including the first `text` not yet consumed."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.output[-2000:]}")
            if select.select([self.fd], [], [], remaining)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child has gone
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{text!r} did not appear before the end:\n{self.output[-2000:]}")
                self.output += chunk.decode("utf-8", errors="replace").replace("\r\n", "\n")
        end = self.output.index(text) + len(text)
        seen, self.output = self.output[:end], self.output[end:]
        return seen

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:  # drain, so that the child never blocks on a full terminal
                if select.select([self.fd], [], [], 0.1)[0]:
                    os.read(self.fd, 4096)
            except OSError:
                pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the REPL did not exit")


@pytest.mark.slow
def test_terminal_chat_streams_stops_on_ctrl_c_and_leaves_on_ctrl_d(checkpoints, env, tmp_path):
    terminal = Terminal([*CHAT, "--model", str(checkpoints / "rambling"), "--temperature", "0",
                         "--repetition-penalty", "1", "--max-tokens", "100000"], env)  # no penalty: it never ends
    assert "pretrained only" in terminal.read_until(">>> ")
    terminal.send("/set top_p 0.5\n")
    terminal.read_until("top_p = 0.5")
    terminal.read_until(">>> ")
    terminal.send("/set temperature hot\n")
    terminal.read_until("error: /set temperature: expected a number, got 'hot'")
    terminal.read_until(">>> ")
    terminal.send("Why did\n")
    terminal.read_until("Why did\n")  # the terminal's echo of the question
    time.sleep(1.0)  # the answer is streaming: 100000 tokens would take minutes
    terminal.send("\x03")
    stopped = terminal.read_until("[stopped]")
    assert len(stopped) > 20, "some of the answer should have been shown before Ctrl-C"
    terminal.read_until(">>> ")
    terminal.send("/show\n")  # the REPL is still there, with its settings
    assert "top_p 0.5" in terminal.read_until(">>> ")
    time.sleep(0.5)  # a person is slower than the test: let readline wait for a key before it gets Ctrl-C
    terminal.send("\x03")  # Ctrl-C at the prompt: a fresh prompt
    terminal.read_until(">>> ")
    terminal.send("/history\n")
    assert "[stopped]" in terminal.read_until(">>> ")
    terminal.send("\x04")  # Ctrl-D
    assert terminal.wait() == 0
    history = (tmp_path / ".seq2seq_history").read_text()
    assert "Why did" in history and "/set top_p 0.5" in history


@pytest.mark.slow
def test_terminal_chat_takes_typed_bytes_that_are_not_utf8(checkpoints, env):
    terminal = Terminal([*CHAT, "--model", str(checkpoints / "pretrained"), "--temperature", "0",
                         "--max-tokens", "4"], {**env, "LC_ALL": "C.UTF-8"})
    terminal.read_until(">>> ")
    os.write(terminal.fd, b"caf\xff ok\n")  # a byte that UTF-8 never has, typed into a UTF-8 terminal
    terminal.read_until(">>> ")
    terminal.send("/history\n")
    assert "[1] caf\ufffd ok\n" in terminal.read_until(">>> ")  # asked and answered
    terminal.send("/quit\n")
    assert terminal.wait() == 0


@pytest.mark.slow
def test_terminal_chat_quits_and_lives_without_a_history_file(checkpoints, env, tmp_path):
    (tmp_path / ".seq2seq_history").mkdir()  # neither readable nor writable as a file
    terminal = Terminal([*CHAT, "--model", str(checkpoints / "pretrained"), "--temperature", "0",
                         "--max-tokens", "4"], env)
    terminal.read_until(">>> ")
    terminal.send("/help\n")
    assert "/shots add" in terminal.read_until(">>> ")
    terminal.send("Why did\n")
    terminal.read_until(">>> ")
    terminal.send("/quit\n")
    assert terminal.wait() == 0


def test_a_chat_checkpoint_reads_the_conversation_and_undo_and_reset_forget_it(model, tokenizer):
    from seq2seq.repl import ChatSession, Exchange

    spec = InferenceSpec.from_dict(INFERENCE)
    session = ChatSession(model, tokenizer, spec, GREEDY)
    session.exchanges += [Exchange("Hello there", "Good morning", "plain"), Exchange("How are you?", "Well", "plain")]
    messages = [{"role": r, "content": c} for r, c in [("user", "Hello there"), ("assistant", "Good morning"),
                                                      ("user", "How are you?"), ("assistant", "Well"),
                                                      ("user", "And you?")]]
    expected = build_conversation_source(tokenizer, messages, task="chat", tone="plain", max_len=64).ids
    assert session.source("And you?", "plain").ids == expected
    assert tokenizer.decode(expected).count("\n") == 3  # the last four turns, one per line
    session.command("/undo")
    assert [e.prompt for e in session.exchanges] == ["Hello there"]
    session.command("/reset")
    alone = build_source(tokenizer, "And you?", task="chat", tone="plain", max_len=64).ids
    assert session.source("And you?", "plain").ids == alone


def test_feedback_commands_append_thumbs_and_pairs(model, tokenizer, tmp_path):
    import io

    from seq2seq.preference import read_feedback
    from seq2seq.repl import ChatSession, ask

    session = ChatSession(model, tokenizer, InferenceSpec.from_dict(INFERENCE), GREEDY)
    session.feedback_path, session.checkpoint_sha256 = tmp_path / "feedback.jsonl", "abc"
    with pytest.raises(ValueError, match="no answer yet"):
        session.command("/good")
    ask(session, "Hello there", io.StringIO(), interactive=False)
    ask(session, PROMPTS[0], io.StringIO(), interactive=False)
    first = session.exchanges[-1].answer
    assert "recorded" in session.command("/bad")
    with pytest.raises(ValueError, match="/retry first"):
        session.command("/prefer 2")
    shown = session.command("/retry")
    assert shown.startswith(f"[1] {first}\n[2] ")
    retried = session.retried
    if retried.strip() != first.strip():
        session.command("/prefer 2")
        assert session.exchanges[-1].answer == retried  # the conversation goes on from the preferred answer
    records = read_feedback(session.feedback_path)
    messages = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content":
                session.exchanges[0].answer}, {"role": "user", "content": PROMPTS[0]}]
    assert records[0].prompt == [m for m in messages if m["content"].strip()]
    assert records[0].response == first and records[0].label is False and records[0].checkpoint_sha256 == "abc"
    if retried.strip() != first.strip():
        assert records[1].chosen == retried and records[1].rejected == first
