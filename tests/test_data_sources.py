"""`seq2seq data fetch`: copying with sha256 checks, clear errors, and the online route's held-out removal."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import pytest

from data_pipelines.sources import (
    HELD_OUT_K,
    RAW_SOURCES,
    dailydialog_key,
    fetch_from_directory,
    fetch_online,
    raw_file,
    remove_held_out_csv,
    remove_held_out_lines,
    resolve_sources,
)
from data_pipelines.splits import bucket
from seq2seq.files import sha256_file


def test_fetch_copies_every_file_with_its_sha256(shared_data: Path, tmp_path: Path):
    raw = tmp_path / "raw"
    messages: list[str] = []
    fetch_from_directory(shared_data, raw, resolve_sources(None), log=messages.append)
    for source in RAW_SOURCES.values():
        for relative, sha in source.files.items():
            assert sha256_file(raw / relative) == sha
    assert any("CC BY-NC-SA" in m for m in messages)  # the licence is shown as files arrive
    messages.clear()
    fetch_from_directory(shared_data, raw, resolve_sources(["jokes_qa"]), log=messages.append)
    assert any("already present" in m for m in messages)


def test_fetch_refuses_a_file_whose_sha256_does_not_match(shared_data: Path, tmp_path: Path):
    source = tmp_path / "shared"
    (source / "jokes_qa").mkdir(parents=True)
    original = (shared_data / "jokes_qa" / "reddit.csv").read_bytes()
    (source / "jokes_qa" / "reddit.csv").write_bytes(original.replace(b"Matt", b"Mark", 1))
    with pytest.raises(ValueError, match=r"reddit\.csv: sha256 is [0-9a-f]{64}, expected 86a7ab"):
        fetch_from_directory(source, tmp_path / "raw", resolve_sources(["jokes_qa"]), log=lambda _: None)
    assert not (tmp_path / "raw" / "jokes_qa" / "reddit.csv").exists()


def test_fetch_names_a_missing_file_and_unknown_sources(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/tinyshakespeare/input\.txt not found"):
        fetch_from_directory(tmp_path / "empty", tmp_path / "raw", resolve_sources(["tinyshakespeare"]))
    with pytest.raises(ValueError, match="unknown source 'wikipedia'"):
        resolve_sources(["wikipedia"])


def test_a_missing_raw_file_names_the_path_and_the_command(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"raw/jokes_qa/reddit\.csv not found; run `seq2seq data fetch --from"):
        raw_file(tmp_path / "raw", "jokes_qa/reddit.csv")


def test_held_out_removal_reproduces_the_shared_copies(shared_data: Path):
    """Online, the shared copy is derived from the original by removing buckets < K. The shared copy has no
    such items left, so deriving from it must give it back byte for byte (CSV quoting, CRLF and all)."""
    jokes = (shared_data / "jokes_qa" / "reddit.csv").read_bytes()
    assert remove_held_out_csv(jokes, lambda row: row[0] + " " + row[1], HELD_OUT_K["jokes_qa"]) == jokes
    humor = (shared_data / "humor_colbert" / "dev.csv").read_bytes()
    assert remove_held_out_csv(humor, lambda row: row[0], HELD_OUT_K["humor_colbert"]) == humor
    sarcasm = (shared_data / "sarcasm_headlines" / "Sarcasm_Headlines_Dataset.json").read_bytes()
    kept, _ = remove_held_out_lines(sarcasm, lambda line: json.loads(line)["headline"], 4)
    assert kept == sarcasm and b"\r\n" in kept
    dialogues = (shared_data / "dailydialog" / "test" / "dialogues_test.txt").read_bytes()
    kept, flags = remove_held_out_lines(dialogues, dailydialog_key, HELD_OUT_K["dailydialog"])
    assert kept == dialogues and all(flags)
    # and an original with a held-out row loses exactly that row
    question = next(f"Why is row {i} held out?" for i in range(1000) if bucket(f"Why is row {i} held out? Because") < 4)
    original = jokes + f"{question},Because\n".encode()
    assert remove_held_out_csv(original, lambda row: row[0] + " " + row[1], HELD_OUT_K["jokes_qa"]) == jokes


def test_online_fetch_checks_the_download_and_derives_the_shared_copy(shared_data: Path, tmp_path: Path, monkeypatch):
    """The network is replaced by local bytes: the right file is accepted, a wrong one refused by sha256."""
    served = {
        "input.txt": shared_data / "tinyshakespeare" / "input.txt",
        "reddit.csv": shared_data / "jokes_qa" / "reddit.csv",
    }
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout: io.BytesIO(served[url.rsplit("/", 1)[-1]].read_bytes())
    )
    fetch_online(tmp_path, resolve_sources(["tinyshakespeare"]), log=lambda _: None)
    assert (
        sha256_file(tmp_path / "tinyshakespeare" / "input.txt")
        == RAW_SOURCES["tinyshakespeare"].files["tinyshakespeare/input.txt"]
    )
    # jokes_qa's upstream file is the original; the shared copy (held-out rows removed) is not it
    with pytest.raises(ValueError, match=r"reddit\.csv: sha256 is 86a7ab.*, expected 2d77f1"):
        fetch_online(tmp_path, resolve_sources(["jokes_qa"]), log=lambda _: None)
