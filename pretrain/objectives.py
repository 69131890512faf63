"""Pretraining objectives for an encoder-decoder on raw text, and the val measurement they are judged by.

(a) Prefix-to-continuation: the encoder reads `<task:prefix_lm> prefix </s>`, the decoder predicts the
    `tgt_len` tokens that follow the prefix.
(b) T5 span corruption (Raffel et al., 2020, 3.1.4): about `noise_density` of a window's tokens, in spans
    of mean length `mean_span_length`, are replaced in the encoder input by sentinels; the decoder predicts
    `<extra_id_0> span_0 <extra_id_1> span_1 ... </s>`. Every row of a batch has the same lengths, so
    neither objective needs padding.

Batches are drawn by a generator seeded with (seed, step), so a step's global batch is the same on any
number of processes and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from seq2seq.trainer import Batch


@dataclass
class ObjectiveConfig:
    src_len: int = 128  # encoder context tokens (plus the task marker and </s>)
    tgt_len: int = 128  # decoder tokens predicted per sequence
    span_corruption: float = 0.0  # fraction of steps that use span corruption instead of prefix-LM
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    min_prefix_len: int | None = None  # prefix-LM context drawn per step from [min_prefix_len, src_len]
    # Data augmentation: this many extra copies of the training split, each segmented at random (BPE-dropout
    # with `sampling_alpha`; `recipe.resegmented_copies`); `sampled_share` of the prefix-to-continuation rows are
    # cut from them. 0: off.
    sampled_segmentations: int = 0
    sampling_alpha: float = 0.1
    sampled_share: float = 0.5

    def __post_init__(self) -> None:
        if self.src_len <= 0 or self.tgt_len <= 0:
            raise ValueError("objective.src_len and objective.tgt_len must be positive")
        if not 0.0 <= self.span_corruption <= 1.0:
            raise ValueError(f"objective.span_corruption must be in [0, 1], got {self.span_corruption}")
        if not 0.0 < self.noise_density < 1.0 or self.mean_span_length < 1:
            raise ValueError("objective.noise_density must be in (0, 1) and objective.mean_span_length >= 1")
        if self.min_prefix_len is not None and not 1 <= self.min_prefix_len <= self.src_len:
            raise ValueError(f"objective.min_prefix_len must be in [1, src_len], got {self.min_prefix_len}")
        if self.sampled_segmentations < 0 or not 0 < self.sampling_alpha < 1 or not 0 <= self.sampled_share <= 1:
            raise ValueError("objective.sampled_segmentations must be >= 0, objective.sampling_alpha in (0, 1) "
                             "and objective.sampled_share in [0, 1]")


class PretrainingObjectives:
    """Makes the micro-batches of each step from a token array (a memory-mapped training split), and from
    randomly segmented copies of it when there are any (`sampled_segmentations`)."""

    def __init__(self, config: ObjectiveConfig, tokens: np.ndarray, tokenizer, batch_size: int, seed: int,
                 resegmented: Sequence[np.ndarray] = ()):
        self.config = config
        self.tokens = tokens
        self.resegmented = list(resegmented)
        self.batch_size = batch_size
        self.seed = seed
        self.prefix_task = tokenizer.task_id("prefix_lm")
        self.span_task = tokenizer.task_id("span_corruption")
        self.bos, self.eos = tokenizer.bos_id, tokenizer.eos_id
        self.sentinels = np.array([tokenizer.sentinel_id(i) for i in range(tokenizer.num_sentinels)])
        needed = config.src_len + config.tgt_len + 1
        if len(tokens) <= needed:
            raise ValueError(f"the training split has {len(tokens)} tokens; objective.src_len + objective.tgt_len "
                             f"needs more than {needed}")

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step])

    def batches(self, step: int, rank: int, world_size: int, accum_steps: int) -> list[Batch]:
        rng = self.rng(step)
        use_spans = rng.random() < self.config.span_corruption
        src, tgt = (self.span_corruption(rng) if use_spans else self.prefix_lm(rng))
        micro = self.batch_size // (world_size * accum_steps)
        batches = []
        for m in range(accum_steps):
            rows = slice((m * world_size + rank) * micro, (m * world_size + rank + 1) * micro)
            tgt_rows = torch.from_numpy(tgt[rows])
            batches.append(Batch(torch.from_numpy(src[rows]), tgt_rows[:, :-1], tgt_rows[:, 1:]))
        return batches

    def prefix_lm(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """src (B, k + 2), tgt (B, tgt_len + 1) = [bos] + continuation."""
        c = self.config
        k = c.src_len if c.min_prefix_len is None else int(rng.integers(c.min_prefix_len, c.src_len + 1))
        sources = self.row_sources(rng)
        starts = rng.integers(0, np.array([len(tokens) for tokens in sources]) - c.src_len - c.tgt_len)
        src = np.empty((self.batch_size, k + 2), dtype=np.int64)
        tgt = np.empty((self.batch_size, c.tgt_len + 1), dtype=np.int64)
        src[:, 0], src[:, -1], tgt[:, 0] = self.prefix_task, self.eos, self.bos
        for row, (tokens, start) in enumerate(zip(sources, starts, strict=True)):
            split = start + c.src_len
            src[row, 1:-1] = tokens[split - k:split]
            tgt[row, 1:] = tokens[split:split + c.tgt_len]
        return src, tgt

    def row_sources(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The token array each row of a batch is cut from: the training split, or (a `sampled_share` of rows)
        one of its randomly segmented copies. Draws nothing from `rng` when there are no copies."""
        if not self.resegmented:
            return [self.tokens] * self.batch_size
        sampled = rng.random(self.batch_size) < self.config.sampled_share
        copies = rng.integers(0, len(self.resegmented), size=self.batch_size)
        return [self.resegmented[c] if s else self.tokens for s, c in zip(sampled, copies, strict=True)]

    def span_lengths(self, n: int) -> tuple[int, int]:
        """(noise tokens, spans) for a window of n tokens, as T5's random_spans_noise_mask."""
        c = self.config
        noise = min(max(1, round(n * c.noise_density)), n - 1)
        spans = min(max(1, round(noise / c.mean_span_length)), len(self.sentinels), noise, n - noise)
        return noise, spans

    def span_corruption(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A window of src_len tokens; src = [task] kept/sentinel interleaving [eos]; tgt = [bos] targets [eos]."""
        n = self.config.src_len
        noise, spans = self.span_lengths(n)
        starts = rng.integers(0, len(self.tokens) - n, size=self.batch_size)
        src = np.empty((self.batch_size, n - noise + spans + 2), dtype=np.int64)
        tgt = np.empty((self.batch_size, noise + spans + 2), dtype=np.int64)
        for row, start in enumerate(starts):
            window = self.tokens[start:start + n].astype(np.int64)
            noise_lengths = random_segmentation(noise, spans, rng)
            keep_lengths = random_segmentation(n - noise, spans, rng)
            src_parts, tgt_parts, pos = [[self.span_task]], [[self.bos]], 0
            for i in range(spans):
                src_parts += [window[pos:pos + keep_lengths[i]], [self.sentinels[i]]]
                pos += keep_lengths[i]
                tgt_parts += [[self.sentinels[i]], window[pos:pos + noise_lengths[i]]]
                pos += noise_lengths[i]
            src[row] = np.concatenate(src_parts + [[self.eos]])
            tgt[row] = np.concatenate(tgt_parts + [[self.eos]])
        return src, tgt


def random_segmentation(total: int, segments: int, rng: np.random.Generator) -> np.ndarray:
    """`segments` positive integers summing to `total`, uniformly among such compositions."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=segments - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))
