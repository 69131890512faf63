"""Extra examples from a JSON Lines file written by hand or by another tool, in the mixture's schema.

`prompt`, `response` and `task` are required; `id`, `source`, `labels` and `split` may be left out (a hash id,
the config's `source` or the file name, null labels, and the hash split of the prompt). Anything else that
is wrong stops the build with the file and line (or is skipped and counted with --skip-invalid); a file with
no examples at all stops it too. Like every builder's, a prompt or response longer than `max_chars` is
dropped and counted.
"""

from __future__ import annotations

from typing import Any

from data_pipelines.builders.context import BuildContext, candidate
from data_pipelines.schema import validate_example
from data_pipelines.splits import split_of
from seq2seq.records import read_jsonl
from seq2seq.tasks import CLOSED_RESPONSE_TASKS


def examples(ctx: BuildContext) -> list[dict[str, Any]]:
    if ctx.path is None:
        raise ValueError("the jsonl builder needs `path:` (a file of examples)")
    if not ctx.path.is_file():
        raise FileNotFoundError(f"{ctx.path} not found (the `path:` of a jsonl source)")
    default_source = ctx.source or ctx.path.stem
    rows, records = [], 0
    for number, record in read_jsonl(ctx.path, ctx.invalid):
        records += 1
        example = validate_example(record, ctx.path, number, ctx.invalid, required=("prompt", "response", "task"))
        if example is None:
            continue
        prompt, response = example["prompt"], example["response"]
        if ctx.too_long(prompt, response):
            continue
        labels = example["labels"]
        content = [prompt] if example["task"] in CLOSED_RESPONSE_TASKS else [prompt, response]
        row = candidate(
            "jsonl",
            example["source"] or default_source,
            example["task"],
            prompt,
            response,
            example["split"] or split_of(prompt),
            content,
            labels["joke"],
            labels["sarcasm"],
        )
        row["id"] = example["id"] or row["id"]
        rows.append(row)
    if not records:
        raise ValueError(f"{ctx.path}: no examples (a jsonl source holds one JSON object per line)")
    return rows
