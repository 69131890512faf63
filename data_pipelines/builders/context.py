"""What every example builder gets, and the row it returns.

A builder returns candidate rows: a schema example (see `data_pipelines.schema`) plus `content`, the source
texts the prompt and the open response were made from. The mixture uses `content` to keep val/test apart
from train (a val example whose content also feeds a train example is dropped), then writes the example
without it. Everything a builder leaves out on purpose is counted in `dropped` under a reason.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipelines.offensive import OffensiveFilter, default_filter
from data_pipelines.schema import make_example
from seq2seq.records import InvalidRecords


@dataclass
class BuildContext:
    raw_dir: Path
    seed: int = 1234
    max_chars: int = 500  # longest prompt or response, in characters
    invalid: InvalidRecords = field(default_factory=InvalidRecords)
    dropped: Counter[str] = field(default_factory=Counter)
    offensive: OffensiveFilter = field(default_factory=default_filter)
    path: Path | None = None  # the `jsonl` builder's input file
    source: str | None = None  # the `jsonl` builder's default `source` field

    def rng(self, builder: str) -> random.Random:
        """A generator of its own per builder, so adding a builder never changes another one's output."""
        return random.Random(f"{self.seed}:{builder}")

    def too_long(self, *texts: str) -> bool:
        if any(len(text) > self.max_chars for text in texts):
            self.dropped[f"longer than max_chars={self.max_chars}"] += 1
            return True
        return False


def candidate(
    builder: str,
    source: str,
    task: str,
    prompt: str,
    response: str,
    split: str,
    content: list[str],
    joke: bool | None = None,
    sarcasm: bool | None = None,
) -> dict[str, Any]:
    """An example with a stable id (a hash of builder, prompt and response) and its `content`."""
    digest = hashlib.sha1(f"{builder}\0{prompt}\0{response}".encode()).hexdigest()[:12]
    row = make_example(f"{builder}-{digest}", source, task, prompt, response, split, joke, sarcasm)
    row["content"] = content
    return row
