"""Sarcasm from the news headlines (TheOnion = sarcastic, HuffPost = not): classification, and headline writing
that teaches the tone control (a few keywords of a headline -> the headline, under <sarcastic> or <plain>).
Headlines go through the same offensive-content filter as jokes, both classes."""

from __future__ import annotations

import re
from typing import Any

from data_pipelines.builders.context import BuildContext, candidate
from data_pipelines.readers import read_sarcasm_headlines
from seq2seq.tasks import IS_SARCASTIC_QUESTIONS, LABEL_WORDS

SOURCE = "sarcasm_headlines"
HEADLINE_PROMPTS = (
    "Write a headline about: {keywords}",
    "Write a news headline with the words {keywords}.",
    "Keywords: {keywords}\nHeadline:",
)
KEYWORDS = 3
STOPWORDS = frozenset(
    """a about after again all also an and any are as at back be because been before being but by can could did do
    does down even every for from get gets got had has have he her here him his how i if in into is it it's its
    just like made make makes many may might more most much must my new no not now of off on one only or other
    our out over says said she should so some still such than that the their them then there these they this
    those through to too up us very was we were what when where which while who why will with would you you're
    your""".split()
)
_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")


def keywords(headline: str, rng: Any, n: int = KEYWORDS) -> list[str]:
    """n content words of the headline, in headline order (fewer if it has fewer)."""
    words = [w for w in _WORD.findall(headline.lower()) if w not in STOPWORDS and len(w) > 2]
    unique = list(dict.fromkeys(words))
    chosen = set(rng.sample(unique, min(n, len(unique))))
    return [w for w in unique if w in chosen]


def is_sarcastic(ctx: BuildContext) -> list[dict[str, Any]]:
    rng = ctx.rng("sarcasm_is_sarcastic")
    rows = []
    for item in read_sarcasm_headlines(ctx.raw_dir, ctx.invalid):
        if ctx.offensive.is_offensive(item.text):
            ctx.dropped[f"offensive (word list), {'sarcastic' if item.label else 'not sarcastic'}"] += 1
            continue
        prompt = rng.choice(IS_SARCASTIC_QUESTIONS).format(text=item.text)
        rows.append(
            candidate(
                "sarcasm_is_sarcastic",
                SOURCE,
                "is_sarcastic",
                prompt,
                LABEL_WORDS[item.label],
                item.split,
                [item.text],
                sarcasm=item.label,
            )
        )
    return rows


def headline(ctx: BuildContext) -> list[dict[str, Any]]:
    rng = ctx.rng("sarcasm_headline")
    rows = []
    for item in read_sarcasm_headlines(ctx.raw_dir, ctx.invalid):
        if ctx.offensive.is_offensive(item.text):
            ctx.dropped[f"offensive (word list), {'sarcastic' if item.label else 'not sarcastic'}"] += 1
            continue
        chosen = keywords(item.text, rng)
        if len(chosen) < 2:
            ctx.dropped["fewer than 2 keywords"] += 1
            continue
        prompt = rng.choice(HEADLINE_PROMPTS).format(keywords=", ".join(chosen))
        rows.append(
            candidate(
                "sarcasm_headline", SOURCE, "headline", prompt, item.text, item.split, [item.text], sarcasm=item.label
            )
        )
    return rows
