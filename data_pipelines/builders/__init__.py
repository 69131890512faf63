"""Example builders for the fine-tuning mixture, by name (the `builder:` of a mixture config's source)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from data_pipelines.builders import dailydialog, jokes, jsonl, sarcasm, shakespeare
from data_pipelines.builders.context import BuildContext


@dataclass(frozen=True)
class Builder:
    build: Callable[[BuildContext], list[dict[str, Any]]]
    raw_sources: tuple[str, ...]  # the raw datasets it reads (their files key the cache)
    description: str

    def run(self, ctx: BuildContext) -> list[dict[str, Any]]:
        """The builder's candidates, each (prompt, response) once: ids hash them, so a repeat has the same id."""
        rows, seen = [], set()
        for row in self.build(ctx):
            if row["id"] in seen:
                ctx.dropped["duplicate example"] += 1
                continue
            seen.add(row["id"])
            rows.append(row)
        return rows


BUILDERS: dict[str, Builder] = {
    "shakespeare_speaker": Builder(
        shakespeare.speaker, ("tinyshakespeare",), "a scene and a line in it -> who says it"
    ),
    "shakespeare_speaker_renamed": Builder(
        shakespeare.speaker_renamed, ("tinyshakespeare",),
        "shakespeare_speaker's train examples with invented character names (to be read off the scene)"
    ),
    "shakespeare_next_turn": Builder(
        shakespeare.next_turn, ("tinyshakespeare",), "one speaker's turn -> the reply that follows"
    ),
    "shakespeare_continue": Builder(shakespeare.continuation, ("tinyshakespeare",), "a passage -> the next lines"),
    "dailydialog_chat": Builder(dailydialog.chat, ("dailydialog",), "conversation so far -> next turn"),
    "dailydialog_not_joke": Builder(
        dailydialog.not_joke, ("dailydialog",), "an utterance -> 'no' (conversational non-jokes for is_joke)"
    ),
    "jokes_qa_punchline": Builder(jokes.jokes_qa_punchline, ("jokes_qa",), "joke question -> punchline, <joke> tone"),
    "jokes_qa_is_joke": Builder(
        jokes.jokes_qa_is_joke, ("jokes_qa",), "a short joke -> 'yes' (positives to balance dailydialog_not_joke)"
    ),
    "humor_colbert_is_joke": Builder(jokes.humor_colbert_is_joke, ("humor_colbert",), "text -> 'yes'/'no' (joke?)"),
    "sarcasm_is_sarcastic": Builder(
        sarcasm.is_sarcastic, ("sarcasm_headlines",), "headline -> 'yes'/'no' (sarcastic?)"
    ),
    "sarcasm_headline": Builder(
        sarcasm.headline, ("sarcasm_headlines",), "keywords -> headline, <sarcastic> or <plain> tone"
    ),
    "jsonl": Builder(jsonl.examples, (), "examples in the mixture schema from a JSON Lines file (`path:`)"),
}

__all__ = ["BUILDERS", "Builder", "BuildContext"]
