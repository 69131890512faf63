"""Pretraining arrays: nanoGPT's val split token for token, character counts for nats/char, weights, staleness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.corpus import (
    CorpusConfig,
    CorpusSource,
    load_corpus,
    load_corpus_config,
    prepare_corpus,
    token_dtype,
)
from seq2seq.tokenizer import Tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


@pytest.fixture(scope="module")
def shakespeare_corpus(sample_raw_dir: Path, tiny_tokenizer: Tokenizer, tmp_path_factory) -> Path:
    config = load_corpus_config(CONFIGS / "corpus-shakespeare.yaml")
    return prepare_corpus(config, tiny_tokenizer, tmp_path_factory.mktemp("corpus"), sample_raw_dir)


def test_shakespeare_arrays_are_the_standard_split(shakespeare_corpus: Path, tiny_tokenizer, shakespeare_text):
    corpus = load_corpus(shakespeare_corpus, tiny_tokenizer)
    assert corpus.train.dtype == np.uint16 and isinstance(corpus.val, np.memmap)
    assert tiny_tokenizer.decode(corpus.val) == shakespeare_text[1_003_854:]
    assert tiny_tokenizer.decode(corpus.train) == shakespeare_text[:1_003_854]
    assert list(corpus.val) == tiny_tokenizer.encode(shakespeare_text[1_003_854:])  # one string, no eos
    char_lengths = tiny_tokenizer.char_lengths()
    assert int(char_lengths[corpus.val].sum()) == corpus.meta["val"]["chars"] == 111_540
    assert corpus.meta["train"]["chars"] == 1_003_854
    assert corpus.meta["tokenizer_sha256"] == tiny_tokenizer.sha256() and corpus.meta["dtype"] == "uint16"
    assert corpus.nats_per_char(1.0, "val") == pytest.approx(len(corpus.val) / 111_540)


def test_a_stale_or_missing_corpus_names_the_command_that_rebuilds_it(
    shakespeare_corpus: Path, shakespeare_text: str, tmp_path: Path
):
    other = Tokenizer.train([shakespeare_text[:200_000]], None, 400)
    with pytest.raises(ValueError, match=r"stale.*`seq2seq data corpus --config configs/data/corpus-shakespeare"):
        load_corpus(shakespeare_corpus, other)
    with pytest.raises(FileNotFoundError, match=r"meta\.json not found; build it with `seq2seq data corpus"):
        load_corpus(tmp_path)


def test_chat_corpus_mixes_weighted_sources_and_keeps_shakespeare_val(
    sample_raw_dir: Path, tiny_tokenizer: Tokenizer, shakespeare_corpus: Path, tmp_path: Path
):
    config = load_corpus_config(CONFIGS / "corpus-chat.yaml")
    corpus = load_corpus(prepare_corpus(config, tiny_tokenizer, tmp_path, sample_raw_dir), tiny_tokenizer)
    shakespeare = load_corpus(shakespeare_corpus)
    assert np.array_equal(corpus.val, shakespeare.val)
    sources = {s["name"]: s for s in corpus.meta["sources"]}
    assert sources["tinyshakespeare"]["train"]["chars"] == 2 * 1_003_854  # weight 2
    assert sources["jokes_qa"]["dropped"]["offensive (word list)"] > 0
    documents = sum(s["train"]["documents"] for s in sources.values())
    assert corpus.meta["train"]["documents"] == documents
    # documents are joined by eos, which counts no characters
    assert int(np.sum(corpus.train == tiny_tokenizer.eos_id)) == documents - 1
    assert corpus.meta["train"]["chars"] == sum(s["train"]["chars"] for s in sources.values())
    assert int(tiny_tokenizer.char_lengths()[corpus.train].sum()) == corpus.meta["train"]["chars"]


def test_text_files_and_hf_datasets_with_weights_and_blank_line_separator(tiny_tokenizer: Tokenizer, tmp_path: Path):
    (tmp_path / "a.txt").write_text("First file.\n" * 50)
    (tmp_path / "b.txt").write_text("Second file.\n" * 50)
    (tmp_path / "rows.jsonl").write_text(
        "".join(json.dumps({"body": f"Row {i} of a json dataset."}) + "\n" for i in range(10))
    )
    config = CorpusConfig(
        name="local",
        separator="blank_line",
        sources=[
            CorpusSource(kind="text_files", paths=[str(tmp_path / "*.txt")], val=True, weight=0.5),
            CorpusSource(
                kind="hf_dataset",
                hf_path="json",
                data_files={"train": str(tmp_path / "rows.jsonl")},
                text_field="body",
                weight=2.0,
            ),
        ],
    )
    corpus = load_corpus(prepare_corpus(config, tiny_tokenizer, tmp_path / "out"))
    sources = {s["kind"]: s for s in corpus.meta["sources"]}
    assert sources["text_files"]["train"]["documents"] == 1  # half of the two files' 90% train parts
    assert sources["text_files"]["val"]["documents"] == 2  # the last 10% of each file
    assert sources["hf_dataset"]["train"]["documents"] == 20
    val_text = tiny_tokenizer.decode(corpus.val)
    assert val_text == "First file.\n" * 5 + "\n\n" + "Second file.\n" * 5
    assert corpus.meta["val"]["chars"] == len(val_text)


def test_dtype_follows_the_vocabulary_size():
    assert token_dtype(4096) == np.uint16 and token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32


def test_corpus_config_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources:\n  - {kind: tinyshakespeare}\n")
    with pytest.raises(ValueError, match="no source has `val: true`"):
        load_corpus_config(bad)
    bad.write_text("name: x\nsources:\n  - {kind: wikipedia, val: true}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: sources\[0\]\.kind: 'wikipedia' is not one of"):
        load_corpus_config(bad)
