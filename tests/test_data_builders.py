"""Example builders: deterministic, correctly labelled, split by the rules, offensive jokes filtered."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from data_pipelines.builders import BUILDERS, BuildContext
from data_pipelines.builders.sarcasm import HEADLINE_PROMPTS
from data_pipelines.offensive import OffensiveFilter, default_filter
from data_pipelines.readers import detokenize, read_dailydialog, shakespeare_speeches
from data_pipelines.schema import FIELDS
from data_pipelines.splits import SHAKESPEARE_VAL_START, split_of
from seq2seq.records import InvalidRecords
from seq2seq.tasks import LABEL_WORDS, tone_of

SOURCE_BUILDERS = [name for name in BUILDERS if name != "jsonl"]


@pytest.fixture(scope="module")
def built(sample_raw_dir: Path) -> dict[str, tuple[list[dict[str, Any]], BuildContext]]:
    out = {}
    for name in SOURCE_BUILDERS:
        ctx = BuildContext(sample_raw_dir)
        out[name] = (BUILDERS[name].run(ctx), ctx)
    return out


@pytest.fixture(scope="module")
def raw_labels(sample_raw_dir: Path) -> dict[str, dict[str, bool]]:
    with (sample_raw_dir / "humor_colbert" / "dev.csv").open(encoding="utf-8", newline="") as f:
        humor = {row["text"].strip(): row["humor"] == "True" for row in csv.DictReader(f)}
    sarcasm = {}
    for line in (sample_raw_dir / "sarcasm_headlines" / "Sarcasm_Headlines_Dataset.json").open(encoding="utf-8"):
        record = json.loads(line)
        sarcasm[record["headline"].strip()] = record["is_sarcastic"] == 1
    return {"humor": humor, "sarcasm": sarcasm}


@pytest.mark.parametrize("name", SOURCE_BUILDERS)
def test_builder_gives_the_same_output_twice(name: str, built, sample_raw_dir: Path):
    rows, _ = built[name]
    assert rows, f"{name} built nothing"
    assert BUILDERS[name].run(BuildContext(sample_raw_dir)) == rows
    assert len({row["id"] for row in rows}) == len(rows)


def test_the_seed_changes_the_sample_not_the_source(built, sample_raw_dir: Path):
    rows, _ = built["shakespeare_speaker"]
    other = BUILDERS["shakespeare_speaker"].run(BuildContext(sample_raw_dir, seed=7))
    assert [r["prompt"] for r in other] != [r["prompt"] for r in rows]
    assert {r["response"] for r in other} == {r["response"] for r in rows}  # the same speeches, other lines


@pytest.mark.parametrize("name", SOURCE_BUILDERS)
def test_every_example_is_complete_and_non_empty(name: str, built):
    for row in built[name][0]:
        assert set(FIELDS) <= set(row) and row["prompt"].strip() and row["response"].strip()
        assert row["split"] in ("train", "val", "test") and row["content"]


@pytest.mark.parametrize("name", ["shakespeare_speaker", "shakespeare_next_turn", "shakespeare_continue"])
def test_shakespeare_examples_come_from_their_split_region(name: str, built, shakespeare_text: str):
    rows, _ = built[name]
    train_text, val_text = shakespeare_text[:SHAKESPEARE_VAL_START], shakespeare_text[SHAKESPEARE_VAL_START:]
    counts = Counter(row["split"] for row in rows)
    assert counts["train"] > 10 * counts["val"] > 0 and counts["test"] > 0
    for row in rows:
        region = train_text if row["split"] == "train" else val_text
        assert all(text in region for text in row["content"]), row
        assert row["labels"] == {"joke": None, "sarcasm": None} and tone_of(row) == "plain"


@pytest.mark.slow
def test_speaker_questions_are_answered_by_the_speaker_after_their_scene(built, shakespeare_text: str):
    said = {(s.speaker, line.strip()) for s in shakespeare_speeches(shakespeare_text) for line in s.text.split("\n")}
    rows = built["shakespeare_speaker"][0]
    for row in rows:
        line = row["content"][0]
        assert line in row["prompt"] and (row["response"], line) in said
        *scene, question = row["prompt"].split("\n\n")
        assert line in question and len(scene) <= 3
        for block in scene:  # "NAME:\nthe last line of their speech" (cut to 100 characters)
            name, text = block.split(":\n")
            assert any(who == name and said_line.startswith(text) for who, said_line in said), block
    assert sum(bool(row["prompt"].split(row["content"][0])[0].count(":\n")) for row in rows) > len(rows) // 2
    phrasings = {row["prompt"].split("\n\n")[-1].split(row["content"][0])[0] for row in rows}
    assert len(phrasings) >= 4 and "Who says: '" in phrasings


def test_renamed_speaker_questions_are_train_questions_with_invented_names(built):
    def without_names(prompt: str) -> tuple[str, ...]:
        return tuple(block.split(":\n", 1)[-1] for block in prompt.split("\n\n"))

    def names(prompt: str, response: str) -> list[str]:
        return [block.split(":\n")[0] for block in prompt.split("\n\n")[:-1]] + [response]

    real = {without_names(row["prompt"]): row for row in built["shakespeare_speaker"][0] if row["split"] == "train"}
    renamed = built["shakespeare_speaker_renamed"][0]
    assert {row["split"] for row in renamed} == {"train"} and len(renamed) >= 0.9 * len(real)
    real_names = {name for row in real.values() for name in names(row["prompt"], row["response"])}
    for row in renamed:
        original = real[without_names(row["prompt"])]  # the same line, question and scene text
        old, new = names(original["prompt"], original["response"]), names(row["prompt"], row["response"])
        mapping = dict(zip(old, new, strict=True))
        assert [mapping[name] for name in old] == new  # one invented name per character, throughout
        assert len(set(mapping.values())) == len(mapping)  # different characters stay different
        assert not set(new) & real_names and all(re.fullmatch(r"[A-Z]{4,12}", name) for name in new)
        assert row["content"] == original["content"]


def test_jokes_are_punchlines_under_the_joke_tone_and_inoffensive(built):
    rows, ctx = built["jokes_qa_punchline"]
    for row in rows:
        assert row["task"] == "chat" and row["labels"] == {"joke": True, "sarcasm": None}
        assert tone_of(row) == "joke"
        assert not default_filter().is_offensive(row["prompt"] + " " + row["response"])
        assert row["split"] == split_of(row["prompt"] + " " + row["response"])
    assert ctx.dropped["offensive (word list)"] > 0.2 * len(rows)  # the filter removes a real share


def test_joke_detection_labels_match_the_source(built, raw_labels):
    rows, ctx = built["humor_colbert_is_joke"]
    for row in rows:
        text = row["content"][0]
        assert row["labels"]["joke"] is raw_labels["humor"][text] and row["labels"]["sarcasm"] is None
        assert row["response"] == LABEL_WORDS[row["labels"]["joke"]] and tone_of(row) == "plain"
        assert text in row["prompt"]
    assert {row["response"] for row in rows} == {"yes", "no"}
    assert ctx.dropped["offensive (word list), joke"] > 0 and ctx.dropped["offensive (word list), not joke"] > 0


def test_conversational_negatives_and_short_joke_positives(built):
    for row in built["dailydialog_not_joke"][0]:
        assert (row["task"], row["response"], row["labels"]["joke"]) == ("is_joke", "no", False)
        text = row["content"][0]
        assert 20 <= len(text) <= 99 and text == text[:1].upper() + text[1:].lower()  # humor_colbert's style
    for row in built["jokes_qa_is_joke"][0]:
        assert (row["task"], row["response"], row["labels"]["joke"]) == ("is_joke", "yes", True)
        assert len(row["content"][0]) <= 99


def test_sarcasm_classification_and_tone_examples_match_the_source(built, raw_labels):
    for row in built["sarcasm_is_sarcastic"][0]:
        headline = row["content"][0]
        assert row["labels"] == {"joke": None, "sarcasm": raw_labels["sarcasm"][headline]}
        assert row["response"] == LABEL_WORDS[row["labels"]["sarcasm"]] and tone_of(row) == "plain"
    template_words = set(re.findall(r"[a-z]+", " ".join(HEADLINE_PROMPTS).lower()))
    tones = Counter()
    for row in built["sarcasm_headline"][0]:
        assert row["response"] in raw_labels["sarcasm"]
        assert row["labels"]["sarcasm"] is raw_labels["sarcasm"][row["response"]]
        keywords = set(re.findall(r"[a-z0-9'-]+", row["prompt"].lower())) - template_words
        assert len(keywords) >= 2 and all(word in row["response"] for word in keywords), row
        tones[tone_of(row)] += 1
    assert tones["sarcastic"] > 0 and tones["plain"] > 0 and set(tones) == {"sarcastic", "plain"}


def test_dialogue_turns_follow_their_context(built, sample_raw_dir: Path):
    dialogues = read_dailydialog(sample_raw_dir, InvalidRecords(), Counter())
    turns = {(d.split, turn) for d in dialogues for turn in d.turns}
    for row in built["dailydialog_chat"][0]:
        assert (row["split"], row["response"]) in turns
        assert all((row["split"], turn) in turns for turn in row["prompt"].split("\n"))
        assert row["labels"] == {"joke": False, "sarcasm": None} and tone_of(row) == "plain"


def test_dailydialog_is_deduplicated_across_official_splits(tmp_path: Path):
    shared = "Hello , how are you ? __eou__ Fine , thanks . __eou__\n"
    for split, lines in {
        "train": [shared, "A train dialogue . __eou__ Yes . __eou__\n", shared],
        "validation": ["A validation dialogue . __eou__ Sure . __eou__\n"],
        "test": ["HELLO, how are you?? __eou__ fine thanks __eou__\n"],  # the same text, normalized
    }.items():
        (tmp_path / "dailydialog" / split).mkdir(parents=True)
        (tmp_path / "dailydialog" / split / f"dialogues_{split}.txt").write_text("".join(lines))
    dropped: Counter[str] = Counter()
    dialogues = read_dailydialog(tmp_path, InvalidRecords(), dropped)
    assert [(d.split, d.turns[0]) for d in dialogues] == [
        ("test", "HELLO, how are you??"),
        ("val", "A validation dialogue."),
        ("train", "A train dialogue."),
    ]
    assert dropped == {"duplicate dialogue (train)": 2}


@pytest.mark.parametrize(
    ("tokenized", "text"),
    [
        ("Hey man , you wanna buy some weed ?", "Hey man, you wanna buy some weed?"),
        ("I ’ m a defender . It ’ s a lot of fun .", "I'm a defender. It's a lot of fun."),
        ("Good.Let ' s go now .", "Good. Let's go now."),
        ('They \' re singing " Happy Birthday " now .', 'They\'re singing "Happy Birthday" now.'),
        ("It costs $ 5 ( or 10 % less ) .", "It costs $5 (or 10% less)."),
    ],
)
def test_detokenize(tokenized: str, text: str):
    assert detokenize(tokenized) == text


def test_offensive_filter_matches_words_prefixes_and_phrases():
    words = OffensiveFilter(["rape*", "black people", "sex"])
    assert words.is_offensive("He was RAPED.") and not words.is_offensive("a rapist")  # prefixes are literal
    assert words.is_offensive("What do black people say?") and words.is_offensive("sex!")
    assert not words.is_offensive("I ate a grape.") and not words.is_offensive("A black cat, people!")
    assert not words.is_offensive("Sussex") and not words.is_offensive("")
    listed = default_filter()
    assert listed.is_offensive("Why don't women ...") and not listed.is_offensive("Why did the chicken cross?")


def test_a_mixture_conversation_is_what_serving_sends_for_the_same_turns(built, sample_raw_dir: Path):
    """The chat examples lay a conversation out exactly as `seq2seq chat` and `seq2seq serve` do: rebuilt from
    its dialogue as messages, each example's prompt is what the library renders for them."""
    from collections import Counter

    from data_pipelines.readers import read_dailydialog
    from seq2seq.prompting import CONVERSATION_TURNS, conversation_text
    from seq2seq.records import InvalidRecords

    rows = built["dailydialog_chat"][0]
    dialogues = read_dailydialog(sample_raw_dir, InvalidRecords(), Counter())
    by_response = {}
    for dialogue in dialogues:
        for t in range(1, len(dialogue.turns)):
            by_response.setdefault((dialogue.turns[t], dialogue.turns[t - 1]), dialogue.turns[:t])
    checked = 0
    for row in rows[:200]:
        last_turn = row["prompt"].split("\n")[-1]
        turns = by_response.get((row["response"], last_turn))
        if turns is None or len("\n".join(turns[-CONVERSATION_TURNS:])) > 500:
            continue
        messages = [{"role": "user" if (len(turns) - i) % 2 else "assistant", "content": text}
                    for i, text in enumerate(turns)]
        assert conversation_text([m["content"] for m in messages]) == row["prompt"]
        checked += 1
    assert checked > 50
