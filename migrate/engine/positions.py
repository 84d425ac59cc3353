"""Where a finding is in the input file, when the rule that made it saw a text an earlier rule changed.

Rules run one after another, each on the text the previous ones left. A rule's line numbers belong
to that text; reports must name lines of the file the user has. Lines outside every changed region
map exactly (a diff between the two texts); a line inside one maps to the start of the original
region it replaced. The column is where the code on the reported line starts (1-based).
"""

from __future__ import annotations

import difflib
from typing import Callable

from tf_migrate.engine.source import split_lines

Mapping = Callable[[int], "tuple[int, int]"]


class Positions:
    def __init__(self, original: str) -> None:
        self.original = original
        self._lines: list[str] | None = None
        self._cache: tuple[str, Mapping] | None = None

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = split_lines(self.original)
        return self._lines

    def column(self, line: int) -> int:
        if not 1 <= line <= len(self.lines):
            return 0
        text = self.lines[line - 1]
        stripped = text.lstrip(" \t\f")
        return len(text) - len(stripped) + 1

    def mapped(self, current: str) -> Mapping:
        """line of `current` -> (line, column) in the original."""
        if current is self.original:
            return lambda line: (line, self.column(line))
        if self._cache is None or self._cache[0] is not current:
            table = _line_table(self.lines, split_lines(current))
            self._cache = (current, lambda line: self._at(table, line))
        return self._cache[1]

    def _at(self, table: list[int], line: int) -> tuple[int, int]:
        original = table[line - 1] if 1 <= line <= len(table) else line
        return original, self.column(original)


def _line_table(old: list[str], new: list[str]) -> list[int]:
    """For each line of `new` (0-based index), the 1-based line of `old` it stands for."""
    table = [0] * len(new)
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for j in range(j1, j2):
            table[j] = i1 + (j - j1) + 1 if tag == "equal" else min(i1 + 1, max(len(old), 1))
    return table
