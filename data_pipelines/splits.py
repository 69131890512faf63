"""Train/val/test splits.

- Tiny Shakespeare: nanoGPT's split, the first 90% of characters train and the last 10% val, so val numbers
  compare with published ones. For fine-tuning, the val region is cut at a speech boundary into val and test.
- Single-file sources (jokes_qa, humor_colbert, sarcasm_headlines): a hash of the normalized text picks the
  split, with the same `norm` and `bucket` as the shared data's held-out rule (see each SOURCE.md). The same
  text therefore lands on the same side in every dataset, and duplicates never straddle a split. The held-out
  sample took buckets 0-3 (0-9 for DailyDialog) out of the shared copy; val and test here are buckets 90-99,
  so they never overlap it.
- DailyDialog keeps its official splits, de-duplicated by text across them (see `conversation.py`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")

TINY_SHAKESPEARE_CHARS = 1_115_394
SHAKESPEARE_VAL_START = int(TINY_SHAKESPEARE_CHARS * 0.9)  # 1,003,854, as nanoGPT computes it

VAL_BUCKETS = range(90, 95)
TEST_BUCKETS = range(95, 100)

_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]")


def norm(text: str) -> str:
    """Lower-case and keep only a-z and 0-9 (the text itself if nothing is left), as in SOURCE.md."""
    normalized = _NOT_ALPHANUMERIC.sub("", text.lower())
    return normalized if normalized else text


def bucket(text: str) -> int:
    """A stable number in [0, 100) from the normalized text."""
    return int(hashlib.sha1(norm(text).encode("utf-8")).hexdigest(), 16) % 100


def split_of(text: str) -> Split:
    """The split of an item of a single-file source, from its text."""
    b = bucket(text)
    if b in VAL_BUCKETS:
        return "val"
    if b in TEST_BUCKETS:
        return "test"
    return "train"


def shakespeare_split(text: str) -> tuple[str, str]:
    """(train, val) text of Tiny Shakespeare: characters [0, n*0.9) and [n*0.9, n), n = len(text)."""
    start = int(len(text) * 0.9)
    return text[:start], text[start:]
