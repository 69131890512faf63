"""SentencePiece tokenizer with the reserved tokens the model relies on.

Ids 0-3 are fixed: <pad>=0, <unk>=1, <s>=2 (bos), </s>=3 (eos). After them come, in this order, one id each:
<sep>, the tone tokens (<plain>, <joke>, <sarcastic>), one task marker per task (<task:chat>, ...), the T5
sentinels <extra_id_0>..<extra_id_31>, and "\n". Look them up with `sep_id`, `tone_id`, `task_id` and
`sentinel_id` rather than hard-coding numbers beyond 0-3.

`decode(encode(x)) == x` for every string: no normalization, no dummy prefix, whitespace kept as is,
characters outside the vocabulary spelled as UTF-8 bytes (byte_fallback), and "\n" a user-defined symbol,
because SentencePiece trains on one line at a time and would otherwise never see a newline.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from seq2seq.tasks import TASKS, TONES
from seq2seq.text import valid_text

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# The reserved tone tokens and task markers come from seq2seq.tasks (TONES, TASKS).
NUM_SENTINELS = 32
TOKENIZER_FILENAME = "tokenizer.model"
META_SPACE = "\u2581"  # SentencePiece's stand-in for " "; a literal one in the input is spelled as bytes


def tone_piece(tone: str) -> str:
    return f"<{tone}>"


def task_piece(task: str) -> str:
    return f"<task:{task}>"


def sentinel_piece(i: int) -> str:
    return f"<extra_id_{i}>"


class Tokenizer:
    """A trained SentencePiece model plus the ids of the reserved tokens."""

    def __init__(self, model_proto: bytes, source: str = "<memory>"):
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except (RuntimeError, OSError) as error:
            raise ValueError(f"{source}: not a SentencePiece model ({error})") from None
        self.vocab_size: int = self._sp.get_piece_size()
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
        expected = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}
        for i, piece in expected.items():
            if i >= self.vocab_size or self._sp.id_to_piece(i) != piece:
                raise ValueError(f"{source}: id {i} must be {piece}; train it with `seq2seq data tokenizer`")
        proto = sentencepiece_model_pb2.ModelProto.FromString(self._proto)
        kinds = proto.SentencePiece
        reserved_types = {kinds.CONTROL, kinds.UNKNOWN, kinds.USER_DEFINED}
        pieces = [piece.piece for piece in proto.pieces]
        self._piece_ids = {piece.piece: i for i, piece in enumerate(proto.pieces) if piece.type in reserved_types}
        for piece in ["<sep>", *map(tone_piece, TONES), "\n"]:
            if piece not in self._piece_ids:
                raise ValueError(f"{source}: reserved token {piece!r} is missing; retrain the tokenizer")
        self.sep_id: int = self._piece_ids["<sep>"]
        self.tasks: tuple[str, ...] = tuple(
            p[len("<task:") : -1] for p in pieces if p.startswith("<task:") and p in self._piece_ids
        )
        self.num_sentinels: int = 0
        while sentinel_piece(self.num_sentinels) in self._piece_ids:
            self.num_sentinels += 1
        self._special_ids = frozenset(i for p, i in self._piece_ids.items() if p != "\n") | {
            PAD_ID,
            UNK_ID,
            BOS_ID,
            EOS_ID,
        }
        self._meta_space_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in META_SPACE.encode("utf-8")]
        self._char_lengths: np.ndarray | None = None

    # ---- training, loading, saving ----

    @classmethod
    def train(
        cls,
        texts_or_files: Iterable[str | Path],
        out_path: str | Path | None,
        vocab_size: int,
        model_type: str = "bpe",
        tasks: Sequence[str] = TASKS,
        num_sentinels: int = NUM_SENTINELS,
        input_sentence_size: int = 2_000_000,
        seed: int = 0,
        num_threads: int = 2,
    ) -> Tokenizer:
        """Train on texts (str, split into lines) or files (Path, read line by line).

        `out_path` is a directory (the model goes to `out_path/tokenizer.model`), a `.model` file path, or
        None to keep it in memory. Raises ValueError for an unknown model type or a vocabulary too small to
        hold the reserved tokens and the 256 byte tokens.
        """
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        reserved = ["<sep>", *map(tone_piece, TONES), *map(task_piece, tasks)]
        reserved += [sentinel_piece(i) for i in range(num_sentinels)] + ["\n"]
        minimum = 4 + len(reserved) + 256 + 64
        if vocab_size < minimum:
            raise ValueError(f"vocab_size {vocab_size} is too small; at least {minimum} are needed")
        model = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_training_lines(texts_or_files),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                user_defined_symbols=reserved,
                byte_fallback=True,
                split_digits=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True,
                max_sentence_length=16384,
                num_threads=num_threads,
                minloglevel=2,
            )
        except RuntimeError as error:  # e.g. "Vocabulary size too high (8192). Please set it to a value <= 5000."
            raise ValueError(f"SentencePiece training failed: {error}") from None
        tokenizer = cls(model.getvalue())
        if out_path is not None:
            out_path = Path(out_path)
            if out_path.suffix == ".model":
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_bytes(tokenizer._proto)
            else:
                tokenizer.save(out_path)
        return tokenizer

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load `path` (a tokenizer.model file, or a directory holding one, e.g. a checkpoint directory)."""
        path = Path(path)
        if path.is_dir() or (not path.exists() and path.suffix != ".model"):
            path = path / TOKENIZER_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer not found: {path} (train one with `seq2seq data tokenizer`, "
                f"or pass the checkpoint directory that holds {TOKENIZER_FILENAME})"
            )
        return cls(path.read_bytes(), source=str(path))

    def save(self, directory: str | Path) -> Path:
        """Write the serialized model to `directory/tokenizer.model` and return that path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILENAME
        path.write_bytes(self._proto)
        return path

    def sha256(self) -> str:
        """Hash of the serialized model: ties token arrays and checkpoints to this exact tokenizer."""
        return hashlib.sha256(self._proto).hexdigest()

    # ---- reserved tokens ----

    def tone_id(self, tone: str) -> int:
        if tone not in TONES:
            raise ValueError(f"unknown tone {tone!r} (known: {', '.join(TONES)})")
        return self._piece_ids[tone_piece(tone)]

    def task_id(self, task: str) -> int:
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r} (known: {', '.join(self.tasks)})")
        return self._piece_ids[task_piece(task)]

    def sentinel_id(self, i: int) -> int:
        if not 0 <= i < self.num_sentinels:
            raise ValueError(f"sentinel index {i} out of range [0, {self.num_sentinels})")
        return self._piece_ids[sentinel_piece(i)]

    def is_special(self, i: int) -> bool:
        """True for pad, unk, bos, eos, <sep>, tones, task markers and sentinels (not for "\\n")."""
        return i in self._special_ids

    # ---- encoding and decoding ----

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`; a lone surrogate (which UTF-8 cannot encode) is read as U+FFFD."""
        text = valid_text(text)
        if META_SPACE in text:
            ids: list[int] = []
            for k, part in enumerate(text.split(META_SPACE)):
                if k:
                    ids.extend(self._meta_space_ids)
                ids.extend(self._sp.encode(part))
        else:
            ids = self._sp.encode(text)
        if add_bos:
            ids.insert(0, BOS_ID)
        if add_eos:
            ids.append(EOS_ID)
        return ids

    def encode_sampled(self, text: str, alpha: float, seed: int) -> list[int]:
        """One random segmentation of `text` (BPE-dropout, Provilkov et al., 2020: each merge is skipped with
        probability `alpha`; for a unigram model, subword regularization with smoothing `alpha`). The same seed
        gives the same segmentation within one process only: SentencePiece's generator differs between processes
        (`pretrain.recipe.resegmented_copies` caches what it makes). Reserved-token strings are not recognised."""
        spm.set_random_generator_seed(seed)
        return self._sp.encode(valid_text(text), enable_sampling=True, alpha=alpha, nbest_size=-1)

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        """Encode many texts at once (SentencePiece's multithreaded batch path)."""
        texts = [valid_text(text) for text in texts]
        out = self._sp.encode(texts, num_threads=num_threads)
        for k, text in enumerate(texts):
            if META_SPACE in text:
                out[k] = self.encode(text)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; pad, bos and eos are dropped, other reserved tokens appear as their pieces."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def char_lengths(self) -> np.ndarray:
        """Characters each id adds when decoded, so sum(char_lengths()[encode(x)]) == len(x) for text without
        reserved-token strings. A byte token counts 1 if it starts a UTF-8 character, 0 if it continues one."""
        if self._char_lengths is None:
            lengths = np.zeros(self.vocab_size, dtype=np.int32)
            for i in range(self.vocab_size):
                if i in self._special_ids:
                    continue
                piece = self._sp.id_to_piece(i)
                if self._sp.is_byte(i):
                    byte = int(piece[3:5], 16)
                    lengths[i] = 0 if 0x80 <= byte < 0xC0 else 1
                else:
                    lengths[i] = len(piece)  # "▁" stands for one space, so the length is unchanged
            self._char_lengths = lengths
        return self._char_lengths


def _training_lines(texts_or_files: Iterable[str | Path]) -> Iterator[str]:
    for item in texts_or_files:
        if isinstance(item, Path):
            with item.open(encoding="utf-8") as f:
                lines: Iterable[str] = (line.rstrip("\n") for line in f)
                yield from (line for line in lines if line)
        else:
            yield from (line for line in item.split("\n") if line)
