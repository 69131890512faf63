"""What the encoder reads: the source layout shared by fine-tuning, the REPL, classification and evaluation,
and `inference.json`, a checkpoint's note of how it wants to be prompted.

A source is

    [task marker] [tone token] <shots> <prompt> </s>

where the shots and the prompt are one text, rendered as lm-evaluation-harness renders a few-shot context
(`render_with_shots`): each demonstration is `prompt + " " + response`, and demonstrations and the prompt are
joined by a blank line. Fine-tuning "with exemplars", the REPL's /shots and `seq2seq eval` all use it, so a
model trained with demonstrations sees them at inference exactly as it learned them. The task marker and the
tone token are optional. A source longer than `max_len` loses tokens from the left of its text part (the oldest
shots first, then the start of the prompt); the markers at the front and </s> at the end always stay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seq2seq.tasks import PRETRAINING_TASK

INFERENCE_FILE = "inference.json"


@dataclass(frozen=True)
class SourceIds:
    ids: list[int]
    truncated_tokens: int = 0  # how many text tokens were cut from the left to fit max_len


TARGET_DELIMITER = " "  # between a demonstration's prompt and its response
SHOT_SEPARATOR = "\n\n"  # between demonstrations, and before the prompt


def render_with_shots(prompt: str, shots: Sequence[tuple[str, str]] = (), instruction: str = "",
                      target_delimiter: str = TARGET_DELIMITER, separator: str = SHOT_SEPARATOR) -> str:
    """`instruction`, each `shot_prompt + target_delimiter + shot_response`, then `prompt`, joined by `separator`."""
    parts = [instruction] if instruction else []
    parts += [f"{shot_prompt}{target_delimiter}{shot_response}" for shot_prompt, shot_response in shots]
    return separator.join([*parts, prompt])


def build_source(
    tokenizer,
    prompt: str,
    *,
    task: str | None,
    tone: str | None,
    shots: Sequence[tuple[str, str]] = (),
    max_len: int,
) -> SourceIds:
    """The encoder input for `prompt`. `task` is a task-marker name (`tokenizer.task_id`), `tone` one of
    plain/joke/sarcastic (`tokenizer.tone_id`); None leaves that token out. Raises ValueError for an unknown
    task or tone, or a `max_len` too small to hold the markers and </s>."""
    head = []
    if task is not None:
        head.append(tokenizer.task_id(task))
    if tone is not None:
        head.append(tokenizer.tone_id(tone))
    room = max_len - len(head) - 1
    if room < 0:
        raise ValueError(f"max_len {max_len} cannot hold the {len(head)} marker token(s) and </s>")
    text = tokenizer.encode(render_with_shots(prompt, shots))
    cut = max(0, len(text) - room)
    return SourceIds(head + text[cut:] + [tokenizer.eos_id], cut)


# ---------------------------------------------------------------------------------------------------------
# Conversations

CONVERSATION_TURNS = 4  # the most recent turns an encoder input holds
ROLES = ("system", "user", "assistant")


def conversation_text(turns: Sequence[str], max_turns: int = CONVERSATION_TURNS, max_chars: int | None = None) -> str:
    """A conversation as the chat data lays it out: its last `max_turns` turns, oldest first, joined by "\n";
    with `max_chars`, the oldest are dropped until it fits (the last turn always stays)."""
    kept = list(turns[-max_turns:])
    while max_chars is not None and len(kept) > 1 and len("\n".join(kept)) > max_chars:
        kept.pop(0)
    return "\n".join(kept)


def build_conversation_source(tokenizer, messages: Sequence[Mapping[str, str]], *, task: str | None, tone: str | None,
                              max_len: int) -> SourceIds:
    """The encoder input for a conversation, a list of {"role", "content"} messages (roles system, user,
    assistant): its turns laid out by `conversation_text`, the oldest dropped first until the source fits
    `max_len` tokens (then the start of the one left is cut, as `build_source` cuts). System messages go first,
    before the turns, and are never dropped; the model was not trained with them, so they act as an instruction
    at most. `truncated_tokens` counts the tokens of dropped turns too."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m["content"] for m in messages if m["role"] != "system"]
    if not turns:
        raise ValueError("messages: a conversation needs a user message")
    kept = turns[-CONVERSATION_TURNS:]
    dropped = 0
    while True:
        text = "\n".join([*system, conversation_text(kept)])
        source = build_source(tokenizer, text, task=task, tone=tone, max_len=max_len)
        if not source.truncated_tokens or len(kept) == 1:
            return SourceIds(source.ids, source.truncated_tokens + dropped)
        dropped += len(tokenizer.encode(kept.pop(0))) + 1


# ---------------------------------------------------------------------------------------------------------
# inference.json


@dataclass(frozen=True)
class InferenceSpec:
    """How a checkpoint is prompted, from `inference.json` (written by fine-tuning):

        {"task": "chat", "tones": true,
         "classifiers": {"joke": {"task": "is_joke", "labels": {"true": "yes", "false": "no"}}, ...}}

    A checkpoint without the file is pretrained only: free-form prompts use the pretraining task marker, and
    it knows no tones and no classifiers."""

    task: str = PRETRAINING_TASK
    tones: bool = False
    classifiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    fine_tuned: bool = False  # True when read from an inference.json

    @classmethod
    def load(cls, directory: str | Path) -> InferenceSpec:
        path = Path(directory) / INFERENCE_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: corrupt JSON ({error})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = INFERENCE_FILE) -> InferenceSpec:
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a JSON object")
        unknown = sorted(set(data) - {"task", "tones", "classifiers"})
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: classifiers, task, tones)")
        task = data.get("task", PRETRAINING_TASK)
        tones = data.get("tones", False)
        classifiers = data.get("classifiers", {})
        if not isinstance(task, str):
            raise ValueError(f"{where}: 'task' must be a string, got {task!r}")
        if not isinstance(tones, bool):
            raise ValueError(f"{where}: 'tones' must be true or false, got {tones!r}")
        if not isinstance(classifiers, Mapping):
            raise ValueError(f"{where}: 'classifiers' must be an object")
        for name, classifier in classifiers.items():
            check_classifier(classifier, f"{where}: classifiers.{name}")
        return cls(task=task, tones=tones, classifiers={k: dict(v) for k, v in classifiers.items()}, fine_tuned=True)


def check_classifier(classifier: Any, where: str = "classifier") -> None:
    """A classifier is {"task": "<task name>", "labels": {"<label>": "<label word>", ...}} with two labels or more,
    and optionally "tone" (the tone token it was trained under) and "template" (how the text was phrased in
    training, with a {text} field, e.g. "Is this a joke? {text}")."""
    if not isinstance(classifier, Mapping) or not isinstance(classifier.get("task"), str):
        raise ValueError(f"{where}: expected {{\"task\": NAME, \"labels\": {{LABEL: WORD, ...}}}}")
    labels = classifier.get("labels")
    if (not isinstance(labels, Mapping) or len(labels) < 2
            or not all(isinstance(word, str) and word for word in labels.values())):
        raise ValueError(f"{where}: 'labels' must map two or more labels to non-empty label words")
    template = classifier.get("template", "{text}")
    if not isinstance(template, str) or "{text}" not in template:
        raise ValueError(f"{where}: 'template' must be a string with a {{text}} field, got {template!r}")
    if classifier.get("tone") is not None and not isinstance(classifier["tone"], str):
        raise ValueError(f"{where}: 'tone' must be a tone name, got {classifier['tone']!r}")
