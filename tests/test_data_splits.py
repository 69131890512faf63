"""Splits: nanoGPT's Tiny Shakespeare boundary, and the hash rule shared with the data's SOURCE.md files."""

from __future__ import annotations

import hashlib
import re

from data_pipelines.splits import SHAKESPEARE_VAL_START, bucket, norm, shakespeare_split, split_of


def test_shakespeare_boundary_is_nanogpts(shakespeare_text: str):
    train, val = shakespeare_split(shakespeare_text)
    n = len(shakespeare_text)
    assert n == 1_115_394 and SHAKESPEARE_VAL_START == int(n * 0.9) == 1_003_854
    assert train == shakespeare_text[:1_003_854] and val == shakespeare_text[1_003_854:]
    assert len(val) == 111_540
    assert val.startswith("?\n\nGREMIO:\nGood morrow, neighbour Baptista.")
    assert train + val == shakespeare_text


def test_norm_and_bucket_follow_source_md():
    def reference_bucket(text: str) -> int:  # copied from the SOURCE.md files
        n = re.sub(r"[^a-z0-9]", "", text.lower())
        n = n if n else text
        return int(hashlib.sha1(n.encode("utf-8")).hexdigest(), 16) % 100

    for text in ["Hello, World!", "hello world", "?!", "Café au lait", "What's 6 inches long?"]:
        assert bucket(text) == reference_bucket(text)
    assert norm("Hey man , you wanna buy some weed ?") == norm("hey man, you wanna buy some weed?")


def test_split_of_is_a_function_of_normalized_text():
    texts = [f"headline number {i}" for i in range(2000)]
    splits = [split_of(t) for t in texts]
    assert splits == [split_of(t.upper() + " !") for t in texts]  # same normalized text, same split
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert 0.03 < share["val"] < 0.07 and 0.03 < share["test"] < 0.07
