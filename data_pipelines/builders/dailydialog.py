"""Conversation from DailyDialog: the turns so far -> the next turn; and its utterances as non-jokes.

The context is the last few turns joined by "\\n" (oldest first), laid out by
`seq2seq.prompting.conversation_text`, which `seq2seq chat` and `seq2seq serve` use for the conversations they
send. Official splits, de-duplicated across them by text (`readers.read_dailydialog`).
"""

from __future__ import annotations

from typing import Any

from data_pipelines.builders.context import BuildContext, candidate
from data_pipelines.builders.jokes import CLASSIFIED_CHARS, is_joke_prompt, sentence_case
from data_pipelines.readers import read_dailydialog
from seq2seq.prompting import conversation_text
from seq2seq.tasks import LABEL_WORDS

SOURCE = "dailydialog"


def chat(ctx: BuildContext) -> list[dict[str, Any]]:
    """Every turn after the first of every dialogue, with the turns before it laid out as the library lays out a
    conversation (`seq2seq.prompting.conversation_text`: the last few, oldest first, one per line)."""
    rows = []
    for dialogue in read_dailydialog(ctx.raw_dir, ctx.invalid, ctx.dropped):
        for t in range(1, len(dialogue.turns)):
            response = dialogue.turns[t]
            prompt = conversation_text(dialogue.turns[:t], max_chars=ctx.max_chars)
            if ctx.too_long(prompt, response):
                continue
            rows.append(
                candidate(
                    "dailydialog_chat", SOURCE, "chat", prompt, response, dialogue.split, [prompt, response], joke=False
                )
            )
    return rows


def not_joke(ctx: BuildContext) -> list[dict[str, Any]]:
    """One utterance per dialogue -> "no" to "is this a joke?": conversational negatives for the joke
    classifier, whose other negatives are all news headlines."""
    rng = ctx.rng("dailydialog_not_joke")
    rows = []
    shortest, longest = CLASSIFIED_CHARS
    for dialogue in read_dailydialog(ctx.raw_dir, ctx.invalid, ctx.dropped):
        fitting = [turn for turn in dialogue.turns if shortest <= len(turn) <= longest]
        if not fitting:
            ctx.dropped[f"no utterance of {shortest}-{longest} characters"] += 1
            continue
        utterance = rng.choice(fitting)
        text = sentence_case(utterance)  # humor_colbert's casing (see jokes.py)
        rows.append(
            candidate(
                "dailydialog_not_joke",
                SOURCE,
                "is_joke",
                is_joke_prompt(rng, text),
                LABEL_WORDS[False],
                dialogue.split,
                [text],
                joke=False,
            )
        )
    return rows
