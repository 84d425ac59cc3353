"""Lines of the file as the user wrote it, for findings made on a partly migrated text.

Rules run one after another; a rule that runs after another one's fix reads the rewritten text,
so its lines (and the "line N" in its messages) count in that text. Reports name the lines of
the original file: lines that survived map to where they were, and lines a rewrite produced map
to the first line of the region it replaced.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable

from tf_migrate.engine.source import split_lines

LineMap = Callable[[int], int]


def identity(line: int) -> int:
    return line


def original_lines(original: str, current: str) -> LineMap:
    """line in `current` -> line in `original`."""
    if original == current:
        return identity
    old, new = split_lines(original), split_lines(current)
    table: dict[int, int] = {}
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        for j in range(j1, j2):
            table[j + 1] = i1 + (j - j1) + 1 if tag == "equal" else min(i1 + 1, max(len(old), 1))
    return lambda line: table.get(line, line)


_MENTIONS = re.compile(r"\b(lines?(?:\(s\))?) (\d+(?:(?:-|, | and )\d+)*)")


def relabel(message: str, line_of: LineMap) -> str:
    """`message` with each "line 12", "lines 3-5", "line(s) 4, 9" naming original lines."""
    if line_of is identity:
        return message

    def replace(match: re.Match) -> str:
        numbers = re.sub(r"\d+", lambda n: str(line_of(int(n.group()))), match.group(2))
        return f"{match.group(1)} {numbers}"

    return _MENTIONS.sub(replace, message)
