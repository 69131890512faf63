"""Jokes: question -> punchline from jokes_qa under the <joke> tone, and joke detection from humor_colbert.

Every joke text goes through the offensive-content filter first (`data_pipelines/offensive_words.txt`); for
detection both classes are filtered, so the classifier cannot learn "a listed word means not a joke".

humor_colbert's texts are sentence-cased and at most 99 characters. Texts added to joke detection from other
sources (short jokes_qa jokes here, DailyDialog utterances in `dailydialog.py`) are made to match, so that
casing and length say nothing about the label.
"""

from __future__ import annotations

from typing import Any

from data_pipelines.builders.context import BuildContext, candidate
from data_pipelines.readers import read_humor_colbert, read_jokes_qa
from seq2seq.tasks import IS_JOKE_QUESTIONS, LABEL_WORDS

CLASSIFIED_CHARS = (20, 99)  # length range of the texts added to joke detection


def is_joke_prompt(rng: Any, text: str) -> str:
    return rng.choice(IS_JOKE_QUESTIONS).format(text=text)


def sentence_case(text: str) -> str:
    """First letter upper case, the rest lower case, as in humor_colbert."""
    return text[:1].upper() + text[1:].lower()


def jokes_qa_punchline(ctx: BuildContext) -> list[dict[str, Any]]:
    """The joke's question -> its punchline, as a chat turn in the <joke> tone (labels.joke = true)."""
    rows = []
    for joke in read_jokes_qa(ctx.raw_dir, ctx.invalid, ctx.dropped):
        if ctx.offensive.is_offensive(joke.text):
            ctx.dropped["offensive (word list)"] += 1
            continue
        if ctx.too_long(joke.question, joke.answer):
            continue
        rows.append(
            candidate(
                "jokes_qa_punchline",
                "jokes_qa",
                "chat",
                joke.question,
                joke.answer,
                joke.split,
                [joke.question, joke.answer],
                joke=True,
            )
        )
    return rows


def humor_colbert_is_joke(ctx: BuildContext) -> list[dict[str, Any]]:
    """A short text -> "yes" if it is a joke, "no" if it is a (news headline) non-joke."""
    rng = ctx.rng("humor_colbert_is_joke")
    rows = []
    for item in read_humor_colbert(ctx.raw_dir, ctx.invalid):
        if ctx.offensive.is_offensive(item.text):
            ctx.dropped[f"offensive (word list), {'joke' if item.label else 'not joke'}"] += 1
            continue
        rows.append(
            candidate(
                "humor_colbert_is_joke",
                "humor_colbert",
                "is_joke",
                is_joke_prompt(rng, item.text),
                LABEL_WORDS[item.label],
                item.split,
                [item.text],
                joke=item.label,
            )
        )
    return rows


def jokes_qa_is_joke(ctx: BuildContext) -> list[dict[str, Any]]:
    """A short jokes_qa joke (question and answer), sentence-cased -> "yes". Joke detection's positives, to
    balance the conversational negatives that `dailydialog_not_joke` adds."""
    rng = ctx.rng("jokes_qa_is_joke")
    shortest, longest = CLASSIFIED_CHARS
    rows = []
    for joke in read_jokes_qa(ctx.raw_dir, ctx.invalid, ctx.dropped):
        if ctx.offensive.is_offensive(joke.text):
            ctx.dropped["offensive (word list)"] += 1
            continue
        if not shortest <= len(joke.text) <= longest:
            ctx.dropped[f"not {shortest}-{longest} characters long"] += 1
            continue
        text = sentence_case(joke.text)
        rows.append(
            candidate(
                "jokes_qa_is_joke",
                "jokes_qa",
                "is_joke",
                is_joke_prompt(rng, text),
                LABEL_WORDS[True],
                joke.split,
                [text],
                joke=True,
            )
        )
    return rows
