"""A small synthetic play, its tokenizer and its tokenized corpus, for pretraining and generation tests that
must run without the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.corpus import CorpusConfig, CorpusSource, prepare_corpus
from seq2seq.tokenizer import Tokenizer

SPEAKERS = ["ROMEO", "JULIET", "NURSE", "FRIAR", "MERCUTIO"]
WORDS = ("love night light window sun moon fair sweet death name rose call doth thou art wherefore hath "
         "heaven star eyes speak tongue gentle father mother sword blood morrow parting sorrow").split()


def synthetic_play(chars: int = 60_000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    parts, size = [], 0
    while size < chars:
        lines = [" ".join(rng.choice(WORDS, size=rng.integers(4, 9))).capitalize() + rng.choice([".", ",", "!", "?"])
                 for _ in range(rng.integers(1, 4))]
        speech = f"{rng.choice(SPEAKERS)}:\n" + "\n".join(lines) + "\n\n"
        parts.append(speech)
        size += len(speech)
    return "".join(parts)


def make_corpus(root: Path, vocab_size: int = 512) -> tuple[Path, Path]:
    """(tokenizer.model path, corpus directory) under root."""
    text = synthetic_play()
    text_file = root / "play.txt"
    text_file.write_text(text)
    tokenizer = Tokenizer.train([text[: int(len(text) * 0.9)]], root / "tokenizer", vocab_size)
    config = CorpusConfig(name="play", sources=[CorpusSource(kind="text_files", paths=[str(text_file)], val=True)])
    prepare_corpus(config, tokenizer, root / "corpus", raw_dir=root)
    return root / "tokenizer" / "tokenizer.model", root / "corpus"
