"""Conversation from DailyDialog: the turns so far -> the next turn; and its utterances as non-jokes.

The context is the last few turns joined by "\\n" (oldest first), which is also how a chat front end should
lay out the conversation it sends as the prompt. Official splits, de-duplicated across them by text
(`readers.read_dailydialog`).
"""

from __future__ import annotations

from typing import Any

from data_pipelines.builders.context import BuildContext, candidate
from data_pipelines.builders.jokes import CLASSIFIED_CHARS, is_joke_prompt, sentence_case
from data_pipelines.readers import read_dailydialog
from seq2seq.tasks import LABEL_WORDS

SOURCE = "dailydialog"
MAX_CONTEXT_TURNS = 4


def chat(ctx: BuildContext) -> list[dict[str, Any]]:
    """Every turn after the first of every dialogue, with up to MAX_CONTEXT_TURNS turns before it."""
    rows = []
    for dialogue in read_dailydialog(ctx.raw_dir, ctx.invalid, ctx.dropped):
        for t in range(1, len(dialogue.turns)):
            response = dialogue.turns[t]
            context = list(dialogue.turns[max(0, t - MAX_CONTEXT_TURNS) : t])
            while len(context) > 1 and len("\n".join(context)) > ctx.max_chars:
                context.pop(0)
            prompt = "\n".join(context)
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
