"""Bad input stops the build with the file and line; --skip-invalid skips it and says how many and why."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from data_pipelines.mixture import MixtureConfig, MixtureSource, build_mixture, load_mixture, load_mixture_config
from data_pipelines.readers import read_dailydialog, read_humor_colbert, read_jokes_qa, read_sarcasm_headlines
from seq2seq.cli import main
from seq2seq.records import InvalidRecordError, InvalidRecords

GOOD = {"prompt": "Tell me a joke.", "response": "Why did the chicken cross the road?", "task": "chat"}
BAD_LINES = {
    "malformed JSON": b'{"prompt": "unterminated\n',
    "missing field 'response'": json.dumps({"prompt": "Hello?", "task": "chat"}).encode() + b"\n",
    "field 'prompt' should be a string, got an integer": json.dumps({**GOOD, "prompt": 42}).encode() + b"\n",
    "empty 'prompt'": json.dumps({**GOOD, "prompt": "  "}).encode() + b"\n",
    "empty 'response'": json.dumps({**GOOD, "response": ""}).encode() + b"\n",
    "bytes that are not UTF-8": json.dumps({**GOOD, "prompt": "caf@"}).encode().replace(b"@", b"\xe9") + b"\n",
    "field 'labels.joke' should be true, false or null": json.dumps(
        {**GOOD, "labels": {"joke": "yes", "sarcasm": None}}
    ).encode()
    + b"\n",
    "unknown task 'poetry'": json.dumps({**GOOD, "task": "poetry"}).encode() + b"\n",
    # JSON can spell half of a surrogate pair; UTF-8 cannot write it into train.jsonl
    "field 'prompt' is not valid Unicode": json.dumps({**GOOD, "prompt": "caf\ud800"}).encode() + b"\n",
}


def jsonl_config(path: Path) -> MixtureConfig:
    return MixtureConfig(name="extra", sources=[MixtureSource(builder="jsonl", path=str(path))])


def write(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"".join(lines))
    return path


@pytest.mark.parametrize("reason", list(BAD_LINES))
def test_each_bad_line_stops_the_build_naming_file_and_line(reason: str, tmp_path: Path):
    good = json.dumps(GOOD).encode() + b"\n"
    path = write(tmp_path / "examples.jsonl", good, good, BAD_LINES[reason], good)
    with pytest.raises(InvalidRecordError, match=rf"examples\.jsonl:3: {reason}") as error:
        build_mixture(jsonl_config(path), tmp_path, tmp_path / "out", log=lambda _: None)
    assert (error.value.path, error.value.line) == (str(path), 3) and "--skip-invalid" in str(error.value)
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_skip_invalid_skips_and_reports_every_bad_line(tmp_path: Path):
    good = [
        json.dumps({**GOOD, "prompt": f"Question {i}?", "response": f"Answer {i}"}).encode() + b"\n" for i in range(3)
    ]
    path = write(tmp_path / "examples.jsonl", good[0], *BAD_LINES.values(), good[1], good[2])
    summary = build_mixture(jsonl_config(path), tmp_path, tmp_path / "out", skip_invalid=True, log=lambda _: None)
    assert sum(summary["examples"].values()) == 3
    skipped = summary["invalid_skipped"]
    assert sum(row["count"] for row in skipped) == len(BAD_LINES)
    reasons = " | ".join(row["reason"] for row in skipped)
    for reason in BAD_LINES:
        assert reason in reasons
    assert all(row["file"] == str(path) for row in skipped)


def test_a_bad_line_in_a_written_mixture_is_an_error_naming_it(tmp_path: Path):
    example = {**GOOD, "id": "a", "source": "s", "labels": {"joke": None, "sarcasm": None}, "split": "train"}
    write(tmp_path / "train.jsonl", json.dumps(example).encode() + b"\n", json.dumps({**example, "split": 3}).encode())
    with pytest.raises(InvalidRecordError, match=r"train\.jsonl:2: field 'split' should be a string"):
        load_mixture(tmp_path, "train")


@pytest.mark.parametrize(
    ("relative", "content", "reader", "message"),
    [
        (
            "sarcasm_headlines/Sarcasm_Headlines_Dataset.json",
            b'{"headline": "a", "is_sarcastic": 1}\r\n{"headline": "b"}\r\n',
            read_sarcasm_headlines,
            r"Dataset\.json:2: missing field 'is_sarcastic'",
        ),
        (
            "sarcasm_headlines/Sarcasm_Headlines_Dataset.json",
            b'{"headline": "a", "is_sarcastic": "1"}\r\n',
            read_sarcasm_headlines,
            r"Dataset\.json:1: field 'is_sarcastic' should be an integer, got a string",
        ),
        (
            "humor_colbert/dev.csv",
            b"text,humor\nA joke,True\nNot sure,Maybe\n",
            read_humor_colbert,
            r"dev\.csv:3: field 'humor'",
        ),
        (
            "jokes_qa/reddit.csv",
            b"Question,Answer\nWhy?,Because\nToo,many,fields\n",
            read_jokes_qa,
            r"reddit\.csv:3: expected 2",
        ),
        ("jokes_qa/reddit.csv", b"Q,A\nWhy?,Because\n", read_jokes_qa, r"reddit\.csv:1: expected the CSV header"),
    ],
)
def test_bad_raw_records_name_file_and_line(tmp_path: Path, relative: str, content: bytes, reader, message: str):
    write_path = tmp_path / relative
    write_path.parent.mkdir(parents=True)
    write(write_path, content)
    args = (tmp_path, InvalidRecords(), Counter()) if reader is read_jokes_qa else (tmp_path, InvalidRecords())
    with pytest.raises(ValueError, match=message):
        reader(*args)


def test_non_utf8_raw_dialogue_is_skipped_and_counted_with_skip_invalid(tmp_path: Path):
    for split in ("train", "validation", "test"):
        (tmp_path / "dailydialog" / split).mkdir(parents=True)
        lines = [b"Hi . __eou__ Hello . __eou__\n", b"Caf\xe9 ? __eou__ Yes . __eou__\n"] if split == "train" else []
        write(tmp_path / "dailydialog" / split / f"dialogues_{split}.txt", *lines)
    with pytest.raises(InvalidRecordError, match=r"dialogues_train\.txt:2: bytes that are not UTF-8"):
        read_dailydialog(tmp_path, InvalidRecords(), Counter())
    invalid = InvalidRecords(skip=True)
    assert len(read_dailydialog(tmp_path, invalid, Counter())) == 1
    assert invalid.total == 1 and "not UTF-8" in invalid.as_rows()[0]["reason"]


def test_the_cli_reports_bad_input_and_skip_invalid(tmp_path: Path, capsys, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path / "data" / "tokenizer")
    path = write(tmp_path / "examples.jsonl", json.dumps(GOOD).encode() + b"\n", BAD_LINES["malformed JSON"])
    config = tmp_path / "extra.yaml"
    config.write_text(
        f"# seq2seq data build --config extra.yaml\nname: extra\nsources:\n  - {{builder: jsonl, path: {path}}}\n"
    )
    argv = ["data", "build", "--config", str(config), "--data-dir", str(tmp_path / "data")]
    assert main(argv) == 2
    assert "examples.jsonl:2: malformed JSON" in capsys.readouterr().err
    assert main([*argv, "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "invalid records skipped: 1" in out and "examples.jsonl: malformed JSON" in out


def test_max_chars_applies_to_jsonl_sources(tmp_path: Path):
    long = {**GOOD, "prompt": "Why? " * 200}  # 1,000 characters
    path = write(tmp_path / "examples.jsonl", json.dumps(GOOD).encode() + b"\n", json.dumps(long).encode() + b"\n")
    summary = build_mixture(jsonl_config(path), tmp_path, tmp_path / "out", log=lambda _: None)
    assert sum(summary["examples"].values()) == 1
    assert summary["dropped"] == {f"jsonl ({path})": {"longer than max_chars=500": 1}}
    written = [json.loads(line) for split in ("train", "val", "test")
               for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()]
    assert [example["prompt"] for example in written] == [GOOD["prompt"]]


@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_an_empty_jsonl_source_is_an_error_naming_it(tmp_path: Path, content: bytes):
    path = write(tmp_path / "empty.jsonl", content)
    with pytest.raises(ValueError, match=r"empty\.jsonl: no examples"):
        build_mixture(jsonl_config(path), tmp_path, tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda _: None)


def test_a_source_without_candidates_is_cached_like_any_other(tmp_path: Path):
    long = {**GOOD, "prompt": "Why? " * 200}
    path = write(tmp_path / "examples.jsonl", json.dumps(long).encode() + b"\n")
    logged: list[str] = []
    for out in ("first", "second"):  # the second build reads the builder's (empty) output from the cache
        summary = build_mixture(jsonl_config(path), tmp_path, tmp_path / out, cache_dir=tmp_path / "cache",
                                log=logged.append)
        assert summary["examples"] == {"train": 0, "val": 0, "test": 0}
        assert summary["dropped"] == {f"jsonl ({path})": {"longer than max_chars=500": 1}}
    assert logged[-1].endswith("0 candidates (cached)")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("weight", -1.0, "weight must be a number >= 0, got -1"),
    ("weight", float("nan"), "weight must be a number >= 0, got nan"),
    ("cap", -5, "cap must not be negative"),
    ("eval_cap", -5, "eval_cap must not be negative"),
])
def test_a_bad_mixture_number_is_refused_naming_its_key(tmp_path: Path, field: str, value: float, message: str):
    config = tmp_path / "mixture.yaml"
    config.write_text(f"name: x\nsources:\n  - {{builder: jsonl, path: a.jsonl}}\n"
                      f"  - {{builder: jsonl, path: b.jsonl, {field}: {json.dumps(value).replace('NaN', '.nan')}}}\n")
    with pytest.raises(ValueError, match=rf"mixture\.yaml: sources\[1\]\.{message}"):
        load_mixture_config(config)
    sources = [MixtureSource(builder="jsonl", path="a.jsonl"), MixtureSource(builder="jsonl", path="b.jsonl")]
    setattr(sources[1], field, value)
    with pytest.raises(ValueError, match=rf"mixture 'x': sources\[1\]\.{message}"):  # a config made in Python too
        build_mixture(MixtureConfig(name="x", sources=sources), tmp_path, tmp_path / "out", log=lambda _: None)
