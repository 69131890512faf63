"""Builders shared by several test modules (test modules import from here, never from one another).

- A tiny tokenizer and a tiny random model on a few English sentences (`train_tokenizer`, `tiny_model`, `PROMPTS`):
  generation, REPL, classification and prompting tests.
- A small synthetic play, its tokenizer and its tokenized corpus (`synthetic_play`, `make_corpus`): pretraining,
  fine-tuning and evaluation tests that must run without the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_pipelines.corpus import CorpusConfig, CorpusSource, prepare_corpus
from seq2seq.model import ModelConfig, Transformer
from seq2seq.tokenizer import Tokenizer

# --- a tiny tokenizer and model -----------------------------------------------------------------------------------

TEXT = ("The quick brown fox jumps over the lazy dog. Why did the chicken cross the road? To get to the other "
        "side!\nOh great, another Monday. I just love meetings that could have been emails. Café au lait costs "
        "3€.\n")
PROMPTS = ["Why did", "Oh great, another Monday", "The quick brown fox jumps over the lazy dog again and again",
           "3€", "I just love"]


def train_tokenizer(directory: Path | None = None) -> Tokenizer:
    return Tokenizer.train([TEXT * 40], directory, vocab_size=400)


def tiny_model(tokenizer: Tokenizer, seed: int = 0, **overrides) -> Transformer:
    """A random pre-norm model with its own output projection: unlike a tied random model, which repeats its
    input token forever, it writes varied tokens, and with a scaled-up </s> row some answers end early."""
    config = dict(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
                  d_ff=64, dropout=0.0, max_seq_len=64, norm_placement="pre", tie_embeddings=False)
    config.update(overrides)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**config)).eval()
    with torch.no_grad():
        model.output_proj.weight[tokenizer.eos_id] *= 4
    return model


# --- a synthetic play and its corpus ------------------------------------------------------------------------------

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
