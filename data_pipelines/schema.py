"""The one JSONL schema for every fine-tuning and evaluation example:

    {"id": str, "source": str, "task": str, "prompt": str, "response": str,
     "labels": {"joke": true|false|null, "sarcasm": true|false|null}, "split": "train"|"val"|"test"}

- `task` names the task marker the encoder input starts with (`seq2seq.tasks.TASKS`).
- `labels` describe the text: for generation tasks, the response (a joke-tone example has joke=true); for the
  classification tasks, the text being classified. null means "not known / not applicable".
- Classification is text to text: the response is a fixed label word, "yes" or "no" (`seq2seq.tasks.LABEL_WORDS`), so a
  classifier scores log p("yes") against log p("no") and the same decoder serves both.
- The tone token of an example (what the encoder sees after the task marker) follows from task and labels:
  see `seq2seq.tasks.tone_of`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_pipelines.splits import SPLITS
from seq2seq.records import InvalidRecords, check_fields
from seq2seq.tasks import LABELS, TASKS
from seq2seq.text import first_surrogate

FIELDS = ("id", "source", "task", "prompt", "response", "labels", "split")


def make_example(
    id: str,
    source: str,
    task: str,
    prompt: str,
    response: str,
    split: str,
    joke: bool | None = None,
    sarcasm: bool | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "source": source,
        "task": task,
        "prompt": prompt,
        "response": response,
        "labels": {"joke": joke, "sarcasm": sarcasm},
        "split": split,
    }


def validate_example(
    record: dict[str, Any], path: Path, line: int, invalid: InvalidRecords, required: tuple[str, ...] = FIELDS
) -> dict[str, Any] | None:
    """The record as a complete example if it is valid, else None after `invalid.reject` (which raises unless
    skipping). Fields not in `required` may be absent; they come back as None (labels: both null)."""
    types: dict[str, Any] = {
        "id": str,
        "source": str,
        "task": str,
        "prompt": str,
        "response": str,
        "labels": dict,
        "split": str,
    }
    present = {name: kind for name, kind in types.items() if name in required or name in record}
    if not check_fields(record, present, path, line, invalid, non_empty=("prompt", "response")):
        return None
    for name in ("id", "source", "prompt", "response"):  # JSON can spell half of a pair: "\ud800"
        at = first_surrogate(record[name]) if name in present else None
        if at is not None:
            invalid.reject(path, line, f"field {name!r} is not valid Unicode (a lone surrogate at character {at + 1})")
            return None
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        invalid.reject(path, line, f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
        return None
    if record["task"] not in TASKS:
        invalid.reject(path, line, f"unknown task {record['task']!r} (tasks: {', '.join(TASKS)})")
        return None
    if "split" in record and record["split"] not in SPLITS:
        invalid.reject(path, line, f"split should be one of {', '.join(SPLITS)}, got {record['split']!r}")
        return None
    labels = record.get("labels", {"joke": None, "sarcasm": None})
    if set(labels) != set(LABELS):
        missing, unknown = sorted(set(LABELS) - set(labels)), sorted(set(labels) - set(LABELS))
        problem = f"missing field 'labels.{missing[0]}'" if missing else f"unknown label {unknown[0]!r}"
        invalid.reject(path, line, problem)
        return None
    for name in LABELS:
        if labels[name] is not None and not isinstance(labels[name], bool):
            invalid.reject(path, line, f"field 'labels.{name}' should be true, false or null, got {labels[name]!r}")
            return None
    example = {name: record.get(name) for name in FIELDS}
    example["labels"] = {name: labels[name] for name in LABELS}
    return example
