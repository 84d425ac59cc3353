"""Columns of findings: where the code on a line of the input file starts (1-based).

Lines are mapped back to the input file by `engine/lines.py` (rules after a fix read the
rewritten text); the column is then read from the input's own line.
"""

from __future__ import annotations

from tf_migrate.engine.source import split_lines


class Columns:
    def __init__(self, original: str) -> None:
        self.original = original
        self._lines: list[str] | None = None

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
