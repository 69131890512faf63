"""Shakespeare Q/A from Tiny Shakespeare: who says a line, how the next speaker replies, what comes next.

Train examples come from the train split of the nanoGPT split (characters before 1,003,854) and val/test
examples from its val split, cut in two at the first speech that starts past its middle: val before,
test after. A speech or passage that crosses a boundary is left out. Each question has several phrasings,
picked by a seeded generator.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any

from data_pipelines.builders.context import BuildContext, candidate
from data_pipelines.readers import Speech, read_tinyshakespeare, shakespeare_speeches
from data_pipelines.splits import SHAKESPEARE_VAL_START
from seq2seq.tasks import NEXT_TURN_QUESTIONS, SPEAKER_QUESTIONS

SOURCE = "tinyshakespeare"
MIN_QUOTE_CHARS = 25  # shorter lines ("Ay, my lord.") could be anyone's
SPEAKER_CONTEXT_SPEECHES = 3  # the scene before a quoted line: this many speeches, each by its last line...
SPEAKER_CONTEXT_CHARS = 100  # ...cut to this many characters
_SPEAKER_LINE = re.compile(r"^[A-Z][A-Za-z' .,&-]{0,40}:$")

CONTINUE_PROMPTS = (
    "Continue the passage:\n{passage}",
    "What comes next?\n{passage}",
    "Continue this scene from Shakespeare:\n{passage}",
    "{passage}",
)


def split_boundaries(text: str, speeches: list[Speech]) -> tuple[int, int]:
    """(val_start, test_start): character offsets where val and test begin."""
    middle = (SHAKESPEARE_VAL_START + len(text)) // 2
    test_start = next((s.start for s in speeches if s.start >= middle), len(text))
    return SHAKESPEARE_VAL_START, test_start


def split_of_span(start: int, end: int, boundaries: tuple[int, int]) -> str | None:
    val_start, test_start = boundaries
    if end <= val_start:
        return "train"
    if val_start <= start and end <= test_start:
        return "val"
    if start >= test_start:
        return "test"
    return None


def speaker(ctx: BuildContext) -> list[dict[str, Any]]:
    """The speeches just before a line, with their speakers' names, and the line -> who says it (one example
    per speech with a line long enough). The scene is what makes the question answerable across plays: a test
    play's characters never appear in train, but who is on stage and who spoke last does carry over (the
    speaker of the speech two back says the line in 59% of Tiny Shakespeare's speeches)."""
    return _speaker_rows(ctx, "shakespeare_speaker", renamed=False)


def speaker_renamed(ctx: BuildContext) -> list[dict[str, Any]]:
    """`speaker`'s train examples with every character named in an example (the scene's speakers and the
    answer) given an invented name, the same one throughout the example, e.g. GREMIO -> DOSANVA. Test speakers
    come from plays that train never saw, so the model must read their names off the scene; with train's own
    names it can instead learn them by heart, and a fine-tuned model answered train characters' names to test
    questions. Invented names, new in every example, can only be copied from the prompt (the idea of the
    anonymised entities of Hermann et al., 2015). Train split only: val and test keep the real names."""
    return _speaker_rows(ctx, "shakespeare_speaker_renamed", renamed=True)


INVENTED_NAME_SYLLABLES = ("AL", "AN", "BA", "BER", "CA", "CLA", "DO", "DI", "EL", "FEL", "GA", "LEO", "LI", "LO",
                           "MA", "MI", "NO", "NI", "OR", "PE", "RA", "RO", "SAN", "SE", "TA", "TI", "VA", "VI", "ZE")


def invented_names(names: list[str], rng) -> dict[str, str]:
    """A different invented name (2-4 syllables) for each distinct name, none of them one of `names`."""
    mapping: dict[str, str] = {}
    for name in dict.fromkeys(names):
        while True:
            new = "".join(rng.choice(INVENTED_NAME_SYLLABLES) for _ in range(rng.randint(2, 4)))
            if new not in names and new not in mapping.values():
                break
        mapping[name] = new
    return mapping


def _speaker_rows(ctx: BuildContext, builder: str, renamed: bool) -> list[dict[str, Any]]:
    text = read_tinyshakespeare(ctx.raw_dir, ctx.invalid)
    speeches = shakespeare_speeches(text)
    boundaries = split_boundaries(text, speeches)
    rng = ctx.rng("shakespeare_speaker")  # both builders pick the same line and question for a speech
    names_rng = ctx.rng(builder)
    rows = []
    for i, speech in enumerate(speeches):
        before = speeches[max(0, i - SPEAKER_CONTEXT_SPEECHES):i]
        split = split_of_span(before[0].start if before else speech.start, speech.end, boundaries)
        lines = [line.strip() for line in speech.text.split("\n") if len(line.strip()) >= MIN_QUOTE_CHARS]
        if split is None:
            ctx.dropped["speech or its scene crosses a split boundary"] += 1
            continue
        if not lines:
            ctx.dropped[f"no line of {MIN_QUOTE_CHARS}+ characters"] += 1
            continue
        line = rng.choice(lines)
        question = rng.choice(SPEAKER_QUESTIONS).format(line=line)
        if renamed and split != "train":
            continue
        name = {s.speaker: s.speaker for s in [*before, speech]}
        if renamed:
            name = invented_names([s.speaker for s in [*before, speech]], names_rng)
        scene = "".join(f"{name[s.speaker]}:\n{s.text.strip().splitlines()[-1][:SPEAKER_CONTEXT_CHARS]}\n\n"
                        for s in before)
        prompt = scene + question
        if ctx.too_long(prompt):
            continue
        rows.append(candidate(builder, SOURCE, "speaker", prompt, name[speech.speaker], split, [line]))
    return rows


def next_turn(ctx: BuildContext) -> list[dict[str, Any]]:
    """One speaker's turn -> the reply that follows it (consecutive speeches by different speakers)."""
    text = read_tinyshakespeare(ctx.raw_dir, ctx.invalid)
    speeches = shakespeare_speeches(text)
    boundaries = split_boundaries(text, speeches)
    rng = ctx.rng("shakespeare_next_turn")
    rows = []
    for turn, reply in pairwise(speeches):
        if turn.speaker == reply.speaker:
            continue
        split = split_of_span(turn.start, reply.end, boundaries)
        if split is None:
            ctx.dropped["turn and reply cross a split boundary"] += 1
            continue
        said = _fit_lines(turn.text, ctx.max_chars // 2, from_end=True)  # the end of a turn is what is answered
        answer = _fit_lines(reply.text, ctx.max_chars, from_end=False)
        template = rng.choice(NEXT_TURN_QUESTIONS)
        prompt = template.format(speaker=turn.speaker, replier=reply.speaker, speech=said)
        response = f"{reply.speaker}:\n{answer}" if "{replier}" not in template else answer
        rows.append(candidate("shakespeare_next_turn", SOURCE, "next_turn", prompt, response, split, [said, answer]))
    return rows


def continuation(ctx: BuildContext) -> list[dict[str, Any]]:
    """A passage of 2-6 lines of the text -> the next 2-4 lines. Speaker names and the blank lines between
    speeches are part of the text, but neither side starts with a blank line or ends with a blank line or a
    speaker's name (the prompt gives the name up to the response; the response takes one more line).
    Windows do not overlap."""
    text = read_tinyshakespeare(ctx.raw_dir, ctx.invalid)
    boundaries = split_boundaries(text, shakespeare_speeches(text))
    rng = ctx.rng("shakespeare_continue")
    lines = text.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    rows = []
    i = _skip_blank(lines, 0)
    while i < len(lines):
        j = _trim_end(lines, i, i + rng.randint(2, 6))
        k = _extend_end(lines, _skip_blank(lines, j) + rng.randint(2, 4))
        if k > len(lines) or j == i:
            break
        passage, following = "\n".join(lines[i:j]), "\n".join(lines[_skip_blank(lines, j) : k])
        split = split_of_span(starts[i], starts[k] - 1, boundaries)
        i = _skip_blank(lines, k)
        if split is None:
            ctx.dropped["passage crosses a split boundary"] += 1
            continue
        if ctx.too_long(passage, following):
            continue
        prompt = rng.choice(CONTINUE_PROMPTS).format(passage=passage)
        rows.append(
            candidate("shakespeare_continue", SOURCE, "continue", prompt, following, split, [passage, following])
        )
    return rows


def _skip_blank(lines: list[str], i: int) -> int:
    while i < len(lines) and not lines[i].strip():
        i += 1
    return i


def _extend_end(lines: list[str], end: int) -> int:
    """Move `end` forward past blank lines and speaker names, so the window ends on a line of speech."""
    while end < len(lines) and (not lines[end - 1].strip() or _SPEAKER_LINE.match(lines[end - 1])):
        end += 1
    return end


def _trim_end(lines: list[str], start: int, end: int) -> int:
    """Move `end` back past trailing blank lines and speaker names (keeping at least one line)."""
    end = min(end, len(lines))
    while end - start > 1 and (not lines[end - 1].strip() or _SPEAKER_LINE.match(lines[end - 1])):
        end -= 1
    return end


def _fit_lines(speech: str, max_chars: int, from_end: bool) -> str:
    """As many whole lines of the speech as fit in max_chars, from its end or its start (at least one)."""
    lines = speech.split("\n")
    if from_end:
        lines.reverse()
    kept = [lines[0]]
    for line in lines[1:]:
        if sum(len(x) + 1 for x in kept) + len(line) > max_chars:
            break
        kept.append(line)
    if from_end:
        kept.reverse()
    return "\n".join(kept)
