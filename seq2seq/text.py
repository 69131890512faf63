"""Text from users as valid Unicode, by one policy: every byte that is not part of valid UTF-8, and every lone
surrogate, becomes U+FFFD (the replacement character). The rest of the text is kept, and the tokenizer only
ever sees text it can encode.

This is for what people type or pipe into the tools (`chat`, `generate --prompt`, `classify`). Files of data
are held to more: a line that is not UTF-8 or holds a lone surrogate is an error naming the file and line
(`seq2seq.records`, `data_pipelines.schema`, `seq2seq.evaluation`), since replacing characters there would
change what a model is trained or scored on without anyone seeing it. See docs/reliability.md, "Input".
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from typing import TextIO

REPLACEMENT_CHARACTER = "\ufffd"
# A Python str holds surrogates where bytes that are not UTF-8 were decoded with "surrogateescape" (sys.argv,
# sys.stdin under the C locale), or where JSON spelled half of a pair ("\ud800"). UTF-8 cannot encode them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with each surrogate code point replaced by U+FFFD."""
    return _SURROGATE.sub(REPLACEMENT_CHARACTER, text)


def first_surrogate(text: str) -> int | None:
    """The index of the first surrogate code point in `text`, or None when it is valid Unicode."""
    match = _SURROGATE.search(text)
    return None if match is None else match.start()


def decode(data: bytes) -> str:
    """UTF-8 bytes as text; each byte that is not part of valid UTF-8 becomes one U+FFFD."""
    return valid_text(data.decode("utf-8", errors="surrogateescape"))


def read_lines(stream: TextIO | None) -> Iterator[str]:
    """The lines of standard input (or another stream), without their line endings, each as valid text. A
    stream with a byte buffer (sys.stdin) is read as bytes, so the locale's error handler plays no part. A
    closed standard input (`<&-`, where Python sets sys.stdin to None) is a ValueError, raised here."""
    if stream is None or stream.closed:
        raise ValueError("standard input is closed: pipe the text in, one item per line")
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        return (decode(line).rstrip("\r\n") for line in buffer)
    return (valid_text(line).rstrip("\r\n") for line in stream)


def input_line(prompt: str) -> str:
    """`input(prompt)` as valid text, whatever bytes were typed. input() decodes a terminal's bytes with
    sys.stdin's error handler (strict under most UTF-8 locales), so it is set to escape them first."""
    if isinstance(sys.stdin, io.TextIOWrapper) and sys.stdin.errors != "surrogateescape":
        sys.stdin.reconfigure(errors="surrogateescape")
    return valid_text(input(prompt))
