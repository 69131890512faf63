"""Reading records from raw files, with one policy for bad input.

A line that is not UTF-8, a malformed JSON or CSV line, a missing field, a value of the wrong type or an empty
text stops the run with an error naming the file and line. With `--skip-invalid` the record is skipped
instead and counted by file and reason, and the counts are printed and kept in the build summary: nothing
is dropped silently.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


class InvalidRecordError(ValueError):
    """A record that breaks the input format; the message names the file and the 1-based line."""

    def __init__(self, path: str | Path, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{path}:{line}: {reason} (pass --skip-invalid to skip and count such records)")


class InvalidRecords:
    """Stop at the first bad record (`skip=False`), or skip bad records and count them by file and reason."""

    def __init__(self, skip: bool = False):
        self.skip = skip
        self.counts: Counter[tuple[str, str]] = Counter()

    def reject(self, path: str | Path, line: int, reason: str) -> None:
        if not self.skip:
            raise InvalidRecordError(path, line, reason)
        self.counts[(str(path), reason)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_rows(self) -> list[dict[str, Any]]:
        return [
            {"file": path, "reason": reason, "count": count} for (path, reason), count in sorted(self.counts.items())
        ]

    def merge_rows(self, rows: list[dict[str, Any]]) -> None:
        """Add counts saved by an earlier run (a cached build reports what its first run skipped)."""
        for row in rows:
            self.counts[(row["file"], row["reason"])] += row["count"]


def read_lines(path: Path, invalid: InvalidRecords) -> Iterator[tuple[int, str]]:
    """(line number, line without its LF or CRLF ending), decoding each line as UTF-8 on its own."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = _decode_line(raw, path, number, invalid)
            if line is not None:
                yield number, line.rstrip("\r\n")


def read_text(path: Path, invalid: InvalidRecords) -> str:
    """The whole file as text, byte for byte; a line that is not UTF-8 is an error (or skipped)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        lines = (_decode_line(raw, path, n, invalid) for n, raw in enumerate(data.splitlines(True), start=1))
        return "".join(line for line in lines if line is not None)


def _decode_line(raw: bytes, path: Path, number: int, invalid: InvalidRecords) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        invalid.reject(path, number, f"bytes that are not UTF-8 (at byte {error.start + 1} of the line)")
        return None


def read_jsonl(path: Path, invalid: InvalidRecords) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file."""
    for number, line in read_lines(path, invalid):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            invalid.reject(path, number, f"malformed JSON ({error.msg}, column {error.colno})")
            continue
        if not isinstance(record, dict):
            invalid.reject(path, number, f"expected a JSON object, got {_json_type(record)}")
            continue
        yield number, record


def read_csv(path: Path, columns: tuple[str, ...], invalid: InvalidRecords) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for a CSV file with a header and one record per line (no quoted newlines)."""
    lines = read_lines(path, invalid)
    header = next(lines, None)
    if header is None or tuple(next(csv.reader([header[1]]), [])) != columns:
        found = None if header is None else header[1]
        raise ValueError(f"{path}:1: expected the CSV header {','.join(columns)!r}, found {found!r}")
    for number, line in lines:
        if not line:
            continue
        try:
            row = next(csv.reader([line], strict=True))
        except csv.Error as error:
            invalid.reject(path, number, f"malformed CSV ({error})")
            continue
        if len(row) != len(columns):
            invalid.reject(path, number, f"expected {len(columns)} CSV fields, got {len(row)}")
            continue
        yield number, dict(zip(columns, row, strict=True))


def check_fields(
    record: Mapping[str, Any],
    types: Mapping[str, type | tuple[type, ...]],
    path: Path,
    line: int,
    invalid: InvalidRecords,
    non_empty: tuple[str, ...] = (),
) -> bool:
    """True if every field in `types` is present with the right type (and the `non_empty` ones are not
    blank); otherwise reject the record with the first problem and return False."""
    for name, expected in types.items():
        if name not in record:
            invalid.reject(path, line, f"missing field {name!r}")
            return False
        value = record[name]
        allowed = expected if isinstance(expected, tuple) else (expected,)
        # JSON true/false are Python bools, which are also ints: only accept them where bool is allowed.
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            names = " or ".join("null" if t is type(None) else _JSON_NAMES.get(t, t.__name__) for t in allowed)
            invalid.reject(path, line, f"field {name!r} should be {names}, got {_json_type(value)}")
            return False
        if name in non_empty and not value.strip():
            invalid.reject(path, line, f"empty {name!r}")
            return False
    return True


_JSON_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "a list"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_NAMES.get(type(value), type(value).__name__)
