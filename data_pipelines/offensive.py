"""The offensive-content filter for joke and sarcasm texts: a documented word list, `offensive_words.txt`
beside this file (its header says what it covers and how entries match)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

WORD_LIST = Path(__file__).with_name("offensive_words.txt")
_WORD = re.compile(r"[a-z0-9]+")


class OffensiveFilter:
    """`is_offensive(text)`: does the text contain a listed word, word prefix or phrase?"""

    def __init__(self, entries: list[str]):
        self.words: set[str] = set()
        prefixes: list[str] = []
        self.phrases: dict[str, list[tuple[str, ...]]] = {}  # first word -> phrases starting with it
        for entry in entries:
            if " " in entry:
                phrase = tuple(entry.split())
                self.phrases.setdefault(phrase[0], []).append(phrase)
            elif entry.endswith("*"):
                prefixes.append(entry[:-1])
            else:
                self.words.add(entry)
        self._prefix = re.compile("|".join(map(re.escape, sorted(prefixes)))) if prefixes else None

    @classmethod
    def from_file(cls, path: Path = WORD_LIST) -> OffensiveFilter:
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = line.split("#", 1)[0].strip().lower()
            if entry:
                entries.append(entry)
        return cls(entries)

    def is_offensive(self, text: str) -> bool:
        words = _WORD.findall(text.lower())
        if not words:
            return False
        if self.words.intersection(words):
            return True
        if self._prefix is not None and any(self._prefix.match(word) for word in words):
            return True
        for i, word in enumerate(words):
            for phrase in self.phrases.get(word, ()):
                if tuple(words[i : i + len(phrase)]) == phrase:
                    return True
        return False


@lru_cache(maxsize=1)
def default_filter() -> OffensiveFilter:
    return OffensiveFilter.from_file()
