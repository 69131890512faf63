"""Readers for the raw datasets under `data/raw/` (laid out as by `seq2seq data fetch`), each returning typed
items that already carry their split. Bad records go through `InvalidRecords` (stop, or skip and count);
items left out on purpose (duplicates) are counted in `dropped` under a reason."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data_pipelines.sources import raw_file
from data_pipelines.splits import SHAKESPEARE_VAL_START, Split, norm, split_of
from seq2seq.records import InvalidRecords, check_fields, read_csv, read_jsonl, read_lines, read_text

# ---- Tiny Shakespeare ----


@dataclass(frozen=True)
class Speech:
    """One turn of the play: `text` spans characters [start, end) of the file."""

    speaker: str
    text: str
    start: int
    end: int


def read_tinyshakespeare(raw_dir: Path, invalid: InvalidRecords) -> str:
    path = raw_file(raw_dir, "tinyshakespeare/input.txt")
    return read_text(path, invalid)


# A speech is "NAME:\n" then its lines, up to a blank line. Names are capitalised and short.
_SPEECH = re.compile(r"^([A-Z][A-Za-z' .,&-]{0,40}):\n((?:.+\n?)+)", re.MULTILINE)


def shakespeare_speeches(text: str) -> list[Speech]:
    speeches = []
    for match in _SPEECH.finditer(text):
        body = match.group(2).rstrip("\n")
        speeches.append(Speech(match.group(1), body, match.start(2), match.start(2) + len(body)))
    return speeches


def shakespeare_region(speech: Speech, val_start: int = SHAKESPEARE_VAL_START) -> str | None:
    """'train' or 'val' (the nanoGPT split), or None for the one speech that straddles the boundary."""
    if speech.end <= val_start:
        return "train"
    if speech.start >= val_start:
        return "val"
    return None


# ---- DailyDialog ----

DAILYDIALOG_SPLITS: dict[str, Split] = {"train": "train", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Dialogue:
    turns: tuple[str, ...]
    split: Split


def read_dailydialog(raw_dir: Path, invalid: InvalidRecords, dropped: Counter[str]) -> list[Dialogue]:
    """Dialogues of the official splits, detokenized. The official splits overlap, so a dialogue whose
    normalized text was already seen is dropped; test is read first, then validation, then train, so the
    evaluation splits keep their dialogues and train gives up its copies."""
    seen: set[str] = set()
    dialogues = []
    for official in ("test", "validation", "train"):
        path = raw_file(raw_dir, f"dailydialog/{official}/dialogues_{official}.txt")
        for number, line in read_lines(path, invalid):
            if not line.strip():
                continue
            if not line.rstrip().endswith("__eou__"):
                invalid.reject(path, number, "a dialogue line must end with __eou__")
                continue
            utterances = [u.strip() for u in line.rstrip().split("__eou__")[:-1]]
            if not all(utterances):
                invalid.reject(path, number, "empty utterance")
                continue
            key = norm(" ".join(utterances))
            if key in seen:
                dropped[f"duplicate dialogue ({official})"] += 1
                continue
            seen.add(key)
            dialogues.append(Dialogue(tuple(map(detokenize, utterances)), DAILYDIALOG_SPLITS[official]))
    return dialogues


_CONTRACTION = re.compile(r"(\w)\s*'\s*(s|m|t|re|ve|ll|d)\b")
_SPACE_BEFORE = re.compile(r"\s+([,.?!;:%)])")
_SPACE_AFTER = re.compile(r"([($])\s+")
_QUOTED = re.compile(r'"\s*([^"]*?)\s*"')
_GLUED_SENTENCE = re.compile(r"([a-z])([.?!])([A-Z])")


def detokenize(utterance: str) -> str:
    """DailyDialog is tokenized with spaces around punctuation ("I ’ m fine , thanks ."); users type
    "I'm fine, thanks.", so undo it. Also splits sentences glued by the source ("Good.Let's go")."""
    text = utterance.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    text = _CONTRACTION.sub(r"\1'\2", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _SPACE_AFTER.sub(r"\1", text)
    text = _QUOTED.sub(r'"\1"', text)
    text = _GLUED_SENTENCE.sub(r"\1\2 \3", text)
    return " ".join(text.split())


# ---- jokes_qa, humor_colbert, sarcasm_headlines (single files, hash splits) ----


@dataclass(frozen=True)
class Joke:
    question: str
    answer: str
    split: Split

    @property
    def text(self) -> str:
        return f"{self.question} {self.answer}"


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: bool
    split: Split


def read_jokes_qa(raw_dir: Path, invalid: InvalidRecords, dropped: Counter[str]) -> list[Joke]:
    """All question -> answer jokes; the rows with an empty answer (13 in the shared copy) are counted."""
    path = raw_file(raw_dir, "jokes_qa/reddit.csv")
    jokes = []
    for number, row in read_csv(path, ("Question", "Answer"), invalid):
        question, answer = row["Question"].strip(), row["Answer"].strip()
        if not question:
            invalid.reject(path, number, "empty 'Question'")
            continue
        if not answer:
            dropped["empty answer"] += 1
            continue
        jokes.append(Joke(question, answer, split_of(f"{row['Question']} {row['Answer']}")))
    return jokes


def read_humor_colbert(raw_dir: Path, invalid: InvalidRecords) -> list[LabelledText]:
    path = raw_file(raw_dir, "humor_colbert/dev.csv")
    items = []
    for number, row in read_csv(path, ("text", "humor"), invalid):
        text, humor = row["text"].strip(), row["humor"]
        if humor not in ("True", "False"):
            invalid.reject(path, number, f"field 'humor' should be True or False, got {humor!r}")
            continue
        if not text:
            invalid.reject(path, number, "empty 'text'")
            continue
        items.append(LabelledText(text, humor == "True", split_of(row["text"])))
    return items


def read_sarcasm_headlines(raw_dir: Path, invalid: InvalidRecords) -> list[LabelledText]:
    path = raw_file(raw_dir, "sarcasm_headlines/Sarcasm_Headlines_Dataset.json")
    items = []
    for number, record in read_jsonl(path, invalid):
        if not check_fields(record, {"headline": str, "is_sarcastic": int}, path, number, invalid, ("headline",)):
            continue
        if record["is_sarcastic"] not in (0, 1):
            invalid.reject(path, number, f"field 'is_sarcastic' should be 0 or 1, got {record['is_sarcastic']}")
            continue
        headline = record["headline"]
        items.append(LabelledText(headline.strip(), record["is_sarcastic"] == 1, split_of(headline)))
    return items
