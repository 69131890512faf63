"""`seq2seq data ...` end to end: fetch, tokenizer, corpus, build, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipelines.corpus import load_corpus
from data_pipelines.mixture import find_leaks, load_mixture
from seq2seq.cli import main
from seq2seq.tokenizer import Tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


@pytest.mark.parametrize("command", ["fetch", "tokenizer", "corpus", "build"])
def test_every_command_has_help(command: str, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--data-dir" in out and len(out.split("\n\n")[1]) > 60  # a description, not just usage


def test_fetch_from_a_local_folder(shared_data: Path, tmp_path: Path, capsys):
    assert main(["data", "fetch", "--from", str(shared_data), "--data-dir", str(tmp_path)]) == 0
    assert (tmp_path / "raw" / "dailydialog" / "test" / "dialogues_test.txt").is_file()
    assert "fetched 5 source(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_tokenizer_corpus_build_end_to_end(sample_raw_dir: Path, tmp_path: Path, capsys):
    dirs = ["--data-dir", str(tmp_path), "--raw-dir", str(sample_raw_dir)]
    assert main(["data", "tokenizer", *dirs, "vocab_size=600"]) == 0
    out = capsys.readouterr().out
    assert "tokens per character on val: tinyshakespeare 0." in out
    tokenizer = Tokenizer.load(tmp_path / "tokenizer")
    assert tokenizer.vocab_size == 600 and (tmp_path / "tokenizer" / "tokenizer.json").is_file()

    config = CONFIGS / "corpus-shakespeare.yaml"
    assert main(["data", "corpus", "--config", str(config), *dirs]) == 0
    assert "111,540 chars" in capsys.readouterr().out
    assert len(load_corpus(tmp_path / "corpus" / "shakespeare", tokenizer).val) > 0

    build = ["data", "build", "--config", str(CONFIGS / "mixture-tiny.yaml"), *dirs]
    assert main(build) == 0
    out = capsys.readouterr().out
    assert "mixture 'tiny'" in out and "jokes_qa / chat" in out and "p50/p90/p99/max" in out
    examples = [e for split in ("train", "val", "test") for e in load_mixture(tmp_path / "mixture" / "tiny", split)]
    assert examples and find_leaks(examples) == []
    assert main(build) == 0
    assert "is up to date" in capsys.readouterr().out


def test_missing_inputs_are_errors_that_name_the_command(tmp_path: Path, capsys):
    assert main(["data", "tokenizer", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "raw/tinyshakespeare/input.txt not found; run `seq2seq data fetch --from" in err
    config = CONFIGS / "mixture-tiny.yaml"
    assert main(["data", "build", "--config", str(config), "--data-dir", str(tmp_path)]) == 2
    assert "tokenizer.model" in capsys.readouterr().err
