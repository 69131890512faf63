"""`seq2seq chat --model DIR`: ask a checkpoint questions in a terminal; `seq2seq generate`: ask it once.

chat is a REPL with line editing and history (readline, kept in ~/.seq2seq_history). Answers stream as they
are generated; Ctrl-C stops the current answer and the REPL goes on; Ctrl-D or /quit leaves. The commands
are listed in HELP. A line that is not a command is a question.

With standard input that is not a terminal (a pipe, a file), chat answers each question line with one line on
standard output, for scripts: a newline inside an answer is written as `\\n` and a backslash as `\\\\`, and a
blank input line gets a blank output line. Command output and notices go to standard error.

What the encoder reads is `seq2seq.prompting.build_source`: the checkpoint's task marker (from its
inference.json; a pretrained-only checkpoint continues text under the pretraining task), the tone token when
the checkpoint was trained with tones, the few-shot examples, then the question. A source longer than the
model's max_seq_len loses tokens from the left, with a notice. With /tone auto each question is classified
first (joke, sarcasm) and answered in the tone found.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from seq2seq.checkpoint import load_pretrained
from seq2seq.classify import classify_all, format_probabilities, probability_true
from seq2seq.device import resolve_device
from seq2seq.generation import GenerationConfig, check_fits, generate, max_new_tokens_limit, stream
from seq2seq.model import Transformer
from seq2seq.prompting import InferenceSpec, SourceIds, build_conversation_source, build_source
from seq2seq.tasks import CHAT_TASK
from seq2seq.text import input_line, read_lines, valid_text

# The defaults of chat and generate: sampling, which reads better than greedy decoding from a small model.
CHAT_DEFAULTS = GenerationConfig(max_new_tokens=128, temperature=0.7, top_p=0.9, repetition_penalty=1.2)
TONES = ("plain", "joke", "sarcastic", "auto")
TONE_OF_CLASSIFIER = {"joke": "joke", "sarcasm": "sarcastic"}  # /tone auto: a "true" here answers in this tone
HISTORY_FILE = Path("~/.seq2seq_history")
PROMPT = ">>> "
SHOT_SEPARATOR = " => "


def parse_seed(value: str) -> int | None:
    return None if value.lower() in ("none", "off", "random") else int(value)


def parse_switch(value: str) -> bool:
    if value.lower() in ("on", "true", "yes", "1"):
        return True
    if value.lower() in ("off", "false", "no", "0"):
        return False
    raise ValueError(value)


# /set KEY VALUE: KEY -> (GenerationConfig field, parser, what the parser accepts)
SETTINGS: dict[str, tuple[str, Callable[[str], object], str]] = {
    "temperature": ("temperature", float, "a number"),
    "top_k": ("top_k", int, "an integer"),
    "top_p": ("top_p", float, "a number"),
    "max_tokens": ("max_new_tokens", int, "an integer"),
    "num_beams": ("num_beams", int, "an integer"),
    "repetition_penalty": ("repetition_penalty", float, "a number"),
    "seed": ("seed", parse_seed, "an integer or none"),
    "compile": ("compile", parse_switch, "on or off"),
}

HELP = f"""\
commands:
  /help                   this list
  /set KEY VALUE          a decoding setting: {", ".join(list(SETTINGS)[:5])},
                          {", ".join(list(SETTINGS)[5:])} (temperature 0 is greedy; top_k 0 and
                          top_p 1 are off; seed none is random; compile on: see --compile)
  /show                   the settings, tone and few-shot examples
  /tone TONE              plain, joke, sarcastic, or auto (each question is classified first)
  /classify TEXT          joke and sarcasm probabilities of TEXT (fine-tuned checkpoints)
  /shots add PROMPT{SHOT_SEPARATOR}RESPONSE
                          a few-shot example, put before each question
  /shots list|clear       show or forget the few-shot examples
  /history                the conversation so far (a chat checkpoint reads its last turns)
  /undo                   forget the last question and its answer
  /reset                  start over: forget the conversation and few-shot examples (settings stay)
  /save FILE              write the questions and answers as JSON lines
  /good, /bad             mark the last answer (with --feedback FILE: appended there for preference tuning)
  /retry                  sample another answer to the last question
  /prefer 1|2             after /retry: keep the better answer, recording the pair (with --feedback)
  /quit                   leave (Ctrl-D too); Ctrl-C stops an answer"""


class Quit(Exception):
    """/quit was asked for."""


@dataclass
class Exchange:
    prompt: str
    answer: str
    tone: str | None  # the tone token the answer was generated under, None for none
    interrupted: bool = False


class ChatSession:
    """A model, its tokenizer and the REPL's state: settings, tone, few-shot examples and the exchanges so far.
    Commands return the text to show and raise ValueError with a one-line message for a bad one."""

    def __init__(self, model: Transformer, tokenizer, spec: InferenceSpec, config: GenerationConfig):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.config = config
        self.tone = "plain"
        self.shots: list[tuple[str, str]] = []
        self.exchanges: list[Exchange] = []
        self.feedback_path: Path | None = None  # --feedback: where /good, /bad and /prefer append
        self.checkpoint_sha256 = ""
        self.retried: str | None = None  # /retry's answer to the last question, until /prefer or the next one

    # -- commands ------------------------------------------------------------------------------------------

    def command(self, line: str) -> str:
        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit"):
            raise Quit
        handlers: dict[str, Callable[[str], str]] = {
            "/help": lambda _: HELP, "/set": self.set_option, "/show": lambda _: self.show(), "/tone": self.set_tone,
            "/classify": self.classify, "/shots": self.shots_command, "/history": lambda _: self.history(),
            "/reset": lambda _: self.reset(), "/undo": lambda _: self.undo(), "/save": self.save,
            "/good": lambda _: self.thumb(True), "/bad": lambda _: self.thumb(False), "/retry": lambda _: self.retry(),
            "/prefer": self.prefer,
        }
        if name not in handlers:
            raise ValueError(f"unknown command {name} (try /help)")
        return handlers[name](rest)

    def set_option(self, argument: str) -> str:
        key, _, value = argument.partition(" ")
        value = value.strip()
        if key not in SETTINGS or not value:
            raise ValueError(f"usage: /set KEY VALUE with KEY one of {', '.join(SETTINGS)}")
        field, parse, expected = SETTINGS[key]
        try:
            parsed = parse(value)
        except ValueError:
            raise ValueError(f"/set {key}: expected {expected}, got {value!r}") from None
        config = dataclasses.replace(self.config, **{field: parsed})  # validated by GenerationConfig
        check_fits(self.model, config)  # and against the model's positions
        self.config = config
        return f"{key} = {parsed}"

    def show(self) -> str:
        settings = "  ".join(f"{key} {getattr(self.config, field)}" for key, (field, _, _) in SETTINGS.items())
        task = self.spec.task if self.spec.fine_tuned else f"{self.spec.task} (pretrained only: continues text)"
        return f"{settings}\ntone {self.tone}  task {task}  few-shot examples {len(self.shots)}"

    def set_tone(self, tone: str) -> str:
        if not tone:
            return f"tone {self.tone}"
        if tone not in TONES:
            raise ValueError(f"unknown tone {tone!r} (choose {', '.join(TONES)})")
        if tone == "auto" and not self.auto_classifiers():
            self.tone = "plain"
            raise ValueError("this checkpoint has no joke/sarcasm classifier (no classification fine-tuning): "
                             "/tone auto falls back to plain")
        if tone in ("joke", "sarcastic", "auto") and not self.spec.tones:
            self.tone = "plain"
            raise ValueError(f"this checkpoint has no tone training: tone {tone} is not available, answers stay "
                             "plain")
        self.tone = tone
        return f"tone {tone}"

    def classify(self, text: str) -> str:
        if not text:
            raise ValueError("usage: /classify TEXT")
        return format_probabilities(classify_all(self.model, self.tokenizer, [text], self.spec)[0])

    def shots_command(self, argument: str) -> str:
        action, _, rest = argument.partition(" ")
        if action in ("", "list"):
            if not self.shots:
                return "no few-shot examples"
            return "\n".join(f"{i}. {p}{SHOT_SEPARATOR}{r}" for i, (p, r) in enumerate(self.shots, 1))
        if action == "clear":
            self.shots.clear()
            return "few-shot examples cleared"
        if action == "add" and SHOT_SEPARATOR.strip() in rest:
            prompt, _, response = rest.partition(SHOT_SEPARATOR.strip())
            prompt, response = prompt.strip(), response.strip()
            if not prompt or not response:
                raise ValueError(f"/shots add: an example needs both a prompt and a response "
                                 f"(/shots add PROMPT{SHOT_SEPARATOR}RESPONSE)")
            self.shots.append((prompt, response))
            return f"few-shot example {len(self.shots)} added"
        raise ValueError(f"usage: /shots add PROMPT{SHOT_SEPARATOR}RESPONSE | /shots list | /shots clear")

    def history(self) -> str:
        if not self.exchanges:
            return "no questions yet"
        lines = []
        for i, exchange in enumerate(self.exchanges, 1):
            lines.append(f"[{i}] {exchange.prompt}")
            lines.append(f"    {exchange.answer}{' [stopped]' if exchange.interrupted else ''}")
        return "\n".join(lines)

    def reset(self) -> str:
        self.retried = None
        self.exchanges.clear()
        self.shots.clear()
        return "questions, answers and few-shot examples forgotten"

    # -- feedback ------------------------------------------------------------------------------------------------

    def last_exchange(self, command: str) -> Exchange:
        if not self.exchanges:
            raise ValueError(f"{command}: no answer yet")
        return self.exchanges[-1]

    def record(self, **fields) -> str:
        from seq2seq.preference import append_feedback, feedback_record

        exchange = self.exchanges[-1]
        prompt = self.prompt_record(exchange.prompt, self.exchanges[:-1])
        record = feedback_record(prompt, self.checkpoint_sha256, tone=exchange.tone, **fields)
        if self.feedback_path is None:
            return "noted (start chat with --feedback FILE to keep feedback for preference tuning)"
        append_feedback(self.feedback_path, record)
        return f"recorded in {self.feedback_path}"

    def thumb(self, label: bool) -> str:
        exchange = self.last_exchange("/good" if label else "/bad")
        if not exchange.answer.strip():
            raise ValueError("the last answer is empty")
        return self.record(response=exchange.answer, label=label)

    def retry(self) -> str:
        exchange = self.last_exchange("/retry")
        config = self.config if self.config.sampling else dataclasses.replace(
            self.config, temperature=CHAT_DEFAULTS.temperature, top_p=CHAT_DEFAULTS.top_p, num_beams=1)
        source = self.source(exchange.prompt, exchange.tone, self.exchanges[:-1])
        self.retried = generate(self.model, self.tokenizer, [source.ids], config)[0].text
        return f"[1] {exchange.answer}\n[2] {self.retried}\n(/prefer 1 or /prefer 2)"

    def prefer(self, argument: str) -> str:
        if argument not in ("1", "2"):
            raise ValueError("usage: /prefer 1|2 (after /retry)")
        exchange = self.last_exchange("/prefer")
        if self.retried is None:
            raise ValueError("/prefer: /retry first, to have two answers")
        first, second = exchange.answer, self.retried
        chosen, rejected = (first, second) if argument == "1" else (second, first)
        if chosen.strip() == rejected.strip():
            self.retried = None
            raise ValueError("/prefer: the two answers are the same; nothing to prefer")
        message = self.record(chosen=chosen, rejected=rejected)
        if argument == "2":  # the conversation goes on from the preferred answer
            self.exchanges[-1] = dataclasses.replace(exchange, answer=second, interrupted=False)
        self.retried = None
        return message

    def undo(self) -> str:
        if not self.exchanges:
            return "no questions yet"
        self.exchanges.pop()
        self.retried = None
        return f"forgot the last exchange ({len(self.exchanges)} left)"

    def save(self, filename: str) -> str:
        if not filename:
            raise ValueError("usage: /save FILE")
        path = Path(filename).expanduser()
        try:
            with path.open("w", encoding="utf-8") as f:
                for exchange in self.exchanges:
                    f.write(json.dumps(dataclasses.asdict(exchange), ensure_ascii=False) + "\n")
        except OSError as error:
            raise ValueError(f"/save: cannot write {path}: {error.strerror}") from None
        return f"saved {len(self.exchanges)} exchange(s) to {path}"

    # -- answering -----------------------------------------------------------------------------------------

    def auto_classifiers(self) -> dict[str, dict]:
        return {name: c for name, c in self.spec.classifiers.items() if name in TONE_OF_CLASSIFIER}

    def answer_tone(self, prompt: str) -> tuple[str | None, str | None]:
        """The tone token to answer `prompt` under (None: the checkpoint has no tones) and, for /tone auto,
        a line saying what the classifiers found."""
        if not self.spec.tones:
            return None, None
        if self.tone != "auto":
            return self.tone, None
        spec = dataclasses.replace(self.spec, classifiers=self.auto_classifiers())
        probabilities = classify_all(self.model, self.tokenizer, [prompt], spec)[0]
        true = {name: probability_true(labels) for name, labels in probabilities.items()}
        best = max(true, key=true.get)
        tone = TONE_OF_CLASSIFIER[best] if true[best] > 0.5 else "plain"
        return tone, f"[tone: {tone} ({format_probabilities(probabilities)})]"

    def reads_conversation(self) -> bool:
        return self.spec.task == CHAT_TASK and not self.shots

    def prompt_record(self, prompt: str, before: list[Exchange]) -> str | list[dict[str, str]]:
        """What the encoder reads for `prompt` after the exchanges `before`: the conversation as messages for a
        chat checkpoint (`build_conversation_source` lays them out), else the question itself."""
        if not self.reads_conversation():
            return prompt
        turns = [text for exchange in before for text in (exchange.prompt, exchange.answer)]
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": text}
                for i, text in enumerate([*turns, prompt]) if text.strip()]

    def source(self, prompt: str, tone: str | None, before: list[Exchange] | None = None) -> SourceIds:
        """A chat checkpoint reads the conversation (its last turns, as `seq2seq serve` and the chat data lay it
        out); other checkpoints, and questions after few-shot examples, read the question alone."""
        max_len = self.model.config.max_seq_len
        record = self.prompt_record(prompt, self.exchanges if before is None else before)
        if isinstance(record, list):
            return build_conversation_source(self.tokenizer, record, task=self.spec.task, tone=tone,
                                             max_len=max_len)
        return build_source(self.tokenizer, prompt, task=self.spec.task, tone=tone, shots=self.shots,
                            max_len=max_len)

    def stream(self, source: SourceIds) -> Iterator[str]:
        return stream(self.model, self.tokenizer, source.ids, self.config)

    def truncation_notice(self, source: SourceIds) -> str | None:
        if not source.truncated_tokens:
            return None
        return (f"[input cut: the first {source.truncated_tokens} tokens were dropped to fit the model's "
                f"{self.model.config.max_seq_len}-token source]")


# ---------------------------------------------------------------------------------------------------------
# The terminal loop and the line-per-question loop


def prepare(session: ChatSession, prompt: str) -> tuple[str | None, SourceIds]:
    """The tone and encoder input for `prompt`; what /tone auto found and any truncation go to stderr."""
    tone, tone_notice = session.answer_tone(prompt)
    source = session.source(prompt, tone)
    for notice in (tone_notice, session.truncation_notice(source)):
        if notice:
            print(notice, file=sys.stderr, flush=True)
    return tone, source


def ask(session: ChatSession, prompt: str, out: TextIO, interactive: bool) -> Exchange:
    """Answer one question: the answer streamed to `out` (interactive) or written as one line at the end.
    Ctrl-C stops an interactive answer; the part written so far is kept."""
    tone, source = prepare(session, prompt)
    pieces: list[str] = []
    interrupted = False
    try:
        for piece in session.stream(source):
            pieces.append(piece)
            if interactive:
                out.write(piece)
                out.flush()
    except KeyboardInterrupt:
        if not interactive:
            raise
        interrupted = True
    exchange = Exchange(prompt, "".join(pieces), tone, interrupted)
    session.exchanges.append(exchange)
    session.retried = None
    if interactive:
        out.write(" [stopped]\n" if interrupted else "\n")
    else:
        out.write(one_line(exchange.answer) + "\n")
    out.flush()
    return exchange


def one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def run_command(session: ChatSession, line: str, out: TextIO) -> None:
    """Run a /command, writing its output or its one-line error to `out`. Raises Quit for /quit."""
    try:
        print(session.command(line), file=out, flush=True)
    except ValueError as error:
        print(f"error: {error}", file=out, flush=True)


def interactive_loop(session: ChatSession, banner: str) -> int:
    readline = setup_readline()
    print(banner, flush=True)
    try:
        while True:
            try:
                line = input_line(PROMPT)
            except EOFError:  # Ctrl-D
                print()
                return 0
            except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line, as in a shell
                print()
                continue
            if not line.strip():
                continue
            try:
                if line.lstrip().startswith("/"):
                    run_command(session, line, sys.stdout)
                else:
                    ask(session, line, sys.stdout, interactive=True)
            except Quit:
                return 0
            except KeyboardInterrupt:  # Ctrl-C during a command, or before an answer began
                print(" [stopped]", flush=True)
    finally:
        if readline is not None:
            try:
                readline.write_history_file(HISTORY_FILE.expanduser())
            except OSError:
                pass


def setup_readline():
    """readline's line editing and the history file, or None where readline is missing."""
    try:
        import readline
    except ImportError:
        return None
    readline.set_history_length(1000)
    try:
        readline.read_history_file(HISTORY_FILE.expanduser())
    except OSError:  # first run, or an unreadable file: start with no history
        pass
    return readline


def line_loop(session: ChatSession, lines: Iterable[str]) -> int:
    for line in lines:
        if line.lstrip().startswith("/"):
            try:
                run_command(session, line, sys.stderr)
            except Quit:
                return 0
        elif not line.strip():
            print(flush=True)
        else:
            ask(session, line, sys.stdout, interactive=False)
    return 0


# ---------------------------------------------------------------------------------------------------------
# seq2seq chat / seq2seq generate


def load_session(args: argparse.Namespace) -> ChatSession:
    config = generation_config(args)
    model, tokenizer = load_pretrained(args.model, resolve_device(args.device))
    if args.max_tokens is None:  # the default fits any model; a number asked for is checked
        config = dataclasses.replace(config, max_new_tokens=min(config.max_new_tokens,
                                                                max_new_tokens_limit(model.config)))
    check_fits(model, config)
    session = ChatSession(model, tokenizer, InferenceSpec.load(args.model), config)
    if getattr(args, "feedback", None):
        from seq2seq.checkpoint import WEIGHTS_FILE
        from seq2seq.files import sha256_file

        session.feedback_path = Path(args.feedback)
        session.checkpoint_sha256 = sha256_file(Path(args.model) / WEIGHTS_FILE)
    try:
        session.set_tone(args.tone)
    except ValueError as error:  # e.g. --tone joke with a pretrained-only checkpoint: answer plain
        print(f"warning: {error}", file=sys.stderr)
    return session


def generation_config(args: argparse.Namespace) -> GenerationConfig:
    given = {"max_new_tokens": args.max_tokens, "temperature": args.temperature, "top_k": args.top_k,
             "top_p": args.top_p, "num_beams": args.num_beams, "repetition_penalty": args.repetition_penalty,
             "length_penalty": args.length_penalty, "seed": args.seed, "stop_strings": args.stop,
             "compile": args.compile or None}
    return dataclasses.replace(CHAT_DEFAULTS, **{key: value for key, value in given.items() if value is not None})


def run_chat(args: argparse.Namespace) -> int:
    # Lines that are not UTF-8 are kept, their bad bytes shown as U+FFFD (seq2seq.text); closed stdin is an error.
    lines = None if sys.stdin is not None and sys.stdin.isatty() else read_lines(sys.stdin)
    session = load_session(args)
    if lines is not None:
        return line_loop(session, lines)
    kind = "fine-tuned" if session.spec.fine_tuned else "pretrained only: it continues the text you give it"
    banner = f"seq2seq chat: {args.model} ({kind}). /help for commands, Ctrl-D or /quit to leave."
    return interactive_loop(session, banner)


def run_generate(args: argparse.Namespace) -> int:
    prompt = valid_text(args.prompt)  # an argument's bytes that are not UTF-8 arrive as surrogates
    session = load_session(args)
    if not args.json:
        ask(session, prompt, sys.stdout, interactive=True)
        return 0
    tone, source = prepare(session, prompt)
    result = generate(session.model, session.tokenizer, [source.ids], session.config)[0]
    print(json.dumps({"prompt": prompt, "text": result.text, "finish_reason": result.finish_reason,
                      "tone": tone, "new_tokens": len(result.token_ids)}, ensure_ascii=False))
    return 0


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CHAT_DEFAULTS
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json, model.safetensors, "
                                                       "tokenizer.model; inference.json once fine-tuned)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--tone", default="plain", choices=TONES, help="answer tone (fine-tuned checkpoints)")
    group = parser.add_argument_group("decoding")
    group.add_argument("--max-tokens", type=int, help=f"new tokens at most: up to the model's max_seq_len - 1 "
                                                      f"(default {defaults.max_new_tokens}, or that if fewer)")
    group.add_argument("--temperature", type=float,
                       help=f"0 for greedy decoding (default {defaults.temperature})")
    group.add_argument("--top-k", type=int, help=f"sample among the k likeliest tokens, 0: off "
                                                 f"(default {defaults.top_k})")
    group.add_argument("--top-p", type=float, help=f"nucleus sampling mass, 1: off (default {defaults.top_p})")
    group.add_argument("--repetition-penalty", type=float,
                       help=f"1: off (default {defaults.repetition_penalty})")
    group.add_argument("--num-beams", type=int, help="beam search with this many beams; needs --temperature 0 "
                                                     f"(default {defaults.num_beams})")
    group.add_argument("--length-penalty", type=float,
                       help=f"beam score = log-prob / length**this (default {defaults.length_penalty})")
    group.add_argument("--seed", type=int, help="sampling seed (default: a new one each answer)")
    group.add_argument("--stop", action="append", metavar="TEXT", help="end the answer before TEXT (repeatable)")
    group.add_argument("--compile", action="store_true",
                       help="decode through torch.compile: the first answer waits tens of seconds while it "
                            "compiles, later ones decode several times faster on CPU (not beam search)")


def register(subparsers) -> None:
    chat = subparsers.add_parser(
        "chat", help="ask a checkpoint questions in a terminal (a REPL)",
        description="Ask a checkpoint questions: answers stream as they are generated. Ctrl-C stops an\n"
                    "answer, Ctrl-D or /quit leaves, /help lists the commands.\n\n"
                    "With standard input that is not a terminal, each question line gets one answer line on\n"
                    "standard output (a newline inside an answer is written as \\n, a backslash as \\\\);\n"
                    "command output and notices go to standard error.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HELP)
    add_model_arguments(chat)
    chat.add_argument("--feedback", metavar="FILE",
                      help="append /good, /bad and /prefer to this JSONL file, for `seq2seq finetune` with "
                           "configs/finetune/dpo.yaml or kto.yaml (docs/preference.md)")
    chat.set_defaults(run=run_chat)
    one = subparsers.add_parser("generate", help="answer one prompt",
                                description="Answer one prompt, streamed to standard output.")
    add_model_arguments(one)
    one.add_argument("--prompt", required=True, help="the question, or the text to continue")
    one.add_argument("--json", action="store_true",
                     help="print one JSON object: prompt, text, finish_reason, tone, new_tokens")
    one.set_defaults(run=run_generate)
