"""Fine-tuning batches: examples of similar length grouped under a token budget, so little is padding.

Each epoch draws the examples of every task by its mixing weight (a weight below 1 subsamples the task, above 1
repeats it), shuffles them, sorts them inside pools of a few thousand by source length (in buckets of 8 tokens)
and then target length, since source and target are padded separately, and cuts the pools into batches
of at most `max_examples` examples and `max_tokens` padded source + target tokens; the batch order is then
shuffled. Everything is seeded by (seed, epoch), so the batch of a step is a pure function of the step.

How much each response token counts in the loss (`Batch.tgt_weights`): with `loss_unit="token"` every token
counts once, so tasks with long responses (chat, continuation) dominate the gradient and a classification example
("yes" </s>) adds two tokens to a batch of hundreds; with `loss_unit="example"` each example's tokens share a
weight of 1, so every example counts the same whatever its length. `task_loss_weights` multiply a task's weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from seq2seq.padding import pad
from seq2seq.trainer import Batch

POOL_BATCHES = 200  # pools hold this many batches' worth of examples before being sorted by length
SOURCE_BUCKET = 8  # source lengths are sorted in buckets of this many tokens, target lengths exactly


@dataclass
class Encoded:
    """An example as token ids: the encoder's source and the decoder's [bos] response [eos]."""

    src: list[int]
    tgt: list[int]
    task: str


class LengthGroupedBatches:
    def __init__(self, examples: list[Encoded], task_weights: dict[str, float], max_examples: int, max_tokens: int,
                 min_examples: int, seed: int, pad_id: int, loss_unit: str = "token",
                 task_loss_weights: dict[str, float] | None = None):
        if not examples:
            raise ValueError("the mixture has no training examples")
        if loss_unit not in ("token", "example"):
            raise ValueError(f"data.loss_unit must be 'token' or 'example', got {loss_unit!r}")
        self.examples = examples
        self.max_examples = max_examples
        self.max_tokens = max_tokens
        self.min_examples = min_examples
        self.seed = seed
        self.pad_id = pad_id
        self.by_task: dict[str, np.ndarray] = {}
        for i, example in enumerate(examples):
            self.by_task.setdefault(example.task, []).append(i)
        self.by_task = {task: np.array(ids) for task, ids in sorted(self.by_task.items())}
        unknown = sorted(set(task_weights) - set(self.by_task))
        if unknown:
            raise ValueError(f"data.task_weights names task {unknown[0]!r}, which the mixture does not have "
                             f"(tasks: {', '.join(self.by_task)})")
        bad = sorted(task for task, weight in task_weights.items() if not (0 <= weight < float("inf")))
        if bad:
            raise ValueError(f"data.task_weights.{bad[0]} must be a finite number >= 0, got {task_weights[bad[0]]!r}")
        self.weights = {task: task_weights.get(task, 1.0) for task in self.by_task}
        task_loss_weights = task_loss_weights or {}
        unknown = sorted(set(task_loss_weights) - set(self.by_task))
        if unknown:
            raise ValueError(f"data.task_loss_weights names task {unknown[0]!r}, which the mixture does not have "
                             f"(tasks: {', '.join(self.by_task)})")
        self.loss_unit = loss_unit
        self.task_loss_weights = task_loss_weights
        self.src_lengths = np.array([len(e.src) for e in examples])
        self.tgt_lengths = np.array([len(e.tgt) for e in examples])
        self._plans: dict[int, list[np.ndarray]] = {}
        self._epoch_sizes: dict[int, int] = {}  # batches per epoch, kept for every epoch planned
        if not self.plan(0):
            raise ValueError("the task weights leave no training examples")

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        drawn = []
        for task, ids in self.by_task.items():
            weight = self.weights[task]
            whole, fraction = int(weight), weight - int(weight)
            drawn += [ids] * whole
            if fraction > 0:
                drawn.append(rng.choice(ids, size=round(fraction * len(ids)), replace=False))
        return rng.permutation(np.concatenate(drawn)) if drawn else np.array([], dtype=int)

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The batches (arrays of example indices) of one epoch."""
        if epoch not in self._plans:
            rng = np.random.default_rng([self.seed, epoch])
            order = self.draw(rng)
            batches = []
            pool_size = POOL_BATCHES * self.max_examples
            for start in range(0, len(order), pool_size):
                pool = order[start:start + pool_size]
                pool = pool[np.lexsort((self.tgt_lengths[pool], self.src_lengths[pool] // SOURCE_BUCKET))]
                batches += self.cut(pool)
            self._plans = {epoch: [batches[i] for i in rng.permutation(len(batches))]}  # keep one epoch cached
            self._epoch_sizes[epoch] = len(batches)
        return self._plans[epoch]

    def epoch_size(self, epoch: int) -> int:
        """Batches in an epoch (epochs differ a little: the draw and the cuts are random)."""
        if epoch not in self._epoch_sizes:
            self.plan(epoch)
        return self._epoch_sizes[epoch]

    def cut(self, pool: np.ndarray) -> list[np.ndarray]:
        batches, current, longest_src, longest_tgt = [], [], 0, 0
        for i in pool:
            example = self.examples[i]
            src, tgt = max(longest_src, len(example.src)), max(longest_tgt, len(example.tgt))
            if current and (len(current) == self.max_examples or (len(current) + 1) * (src + tgt) > self.max_tokens):
                batches.append(np.array(current))
                current, src, tgt = [], len(example.src), len(example.tgt)
            current.append(i)
            longest_src, longest_tgt = src, tgt
        if current:
            batches.append(np.array(current))
        # A batch must give every process and accumulation step at least one example.
        return [b for b in batches if len(b) >= self.min_examples]

    def global_batch(self, step: int) -> np.ndarray:
        """The batch of a step. Finding its epoch takes the sizes of the epochs before it, which are remembered:
        replanning them at every step made a step's cost grow with the epoch (a 2,700-step fine-tune slowed from
        19k to 7k tokens/s by its third epoch)."""
        epoch, index = 0, step
        while index >= self.epoch_size(epoch):
            index -= self.epoch_size(epoch)
            epoch += 1
        return self.plan(epoch)[index]

    def batches(self, step: int, rank: int, world_size: int, accum_steps: int) -> list[Batch]:
        ids = self.global_batch(step)
        parts = np.array_split(ids, world_size * accum_steps)
        return [self.collate([self.examples[i] for i in parts[m * world_size + rank]]) for m in range(accum_steps)]

    def collate(self, examples: list[Encoded]) -> Batch:
        src, src_mask = pad([e.src for e in examples], self.pad_id)
        tgt, tgt_mask = pad([e.tgt for e in examples], self.pad_id)
        weights = None
        if self.loss_unit == "example" or self.task_loss_weights:
            per_token = torch.tensor([self.token_weight(e) for e in examples])
            weights = per_token[:, None].expand(len(examples), tgt.shape[1] - 1).contiguous()
        return Batch(src, tgt[:, :-1], tgt[:, 1:], src_mask, None if tgt_mask is None else tgt_mask[:, :-1],
                     weights)

    def token_weight(self, example: Encoded) -> float:
        """The loss weight of each of the example's target tokens (its response and </s>)."""
        weight = self.task_loss_weights.get(example.task, 1.0)
        return weight / (len(example.tgt) - 1) if self.loss_unit == "example" else weight

    def padding_fraction(self, epoch: int = 0) -> float:
        """Share of padded positions in the source and target tensors of an epoch's batches."""
        real = padded = 0
        for batch in self.plan(epoch):
            src = [len(self.examples[i].src) for i in batch]
            tgt = [len(self.examples[i].tgt) for i in batch]
            real += sum(src) + sum(tgt)
            padded += len(batch) * (max(src) + max(tgt))
        return 1 - real / padded

