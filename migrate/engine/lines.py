"""Lines of the file as the user wrote it, for findings made on a partly migrated text.

Rules run one after another; a rule that runs after another one's fix reads the rewritten text,
so its lines (and the "line N" in its messages) count in that text. Reports name the lines of
the original file: lines that survived map to where they were, and lines a rewrite produced map
to the first line of the region it replaced.
"""

from __future__ import annotations

import difflib
import re
from bisect import bisect_left
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
    for tag, i1, i2, j1, j2 in _LineMatcher(None, old, new, autojunk=False).get_opcodes():
        for j in range(j1, j2):
            table[j + 1] = i1 + (j - j1) + 1 if tag == "equal" else min(i1 + 1, max(len(old), 1))
    return lambda line: table.get(line, line)


class _LineMatcher(difflib.SequenceMatcher):
    """`SequenceMatcher(None, a, b, autojunk=False)` with the same answers, for files whose lines
    repeat many times (a file of many similar classes: blank lines, `return x`, whole bodies).

    difflib's `find_longest_match` visits every pair of equal lines inside the range it is asked
    about, and `get_matching_blocks` asks about ranges that are nearly the whole file once per
    block found: the cost grows with the cube of such a file. Here the maximal runs of equal
    lines (diagonals of the pair matrix) are found once, bucketed by length and sorted by where
    they start; a question reads the buckets from the longest down, each from the first run that
    can reach the range. The answer is difflib's: the longest block inside the range, and of
    those the one starting first in `a`, then in `b` (a run cut by the range's start counts from
    where the range starts, as difflib's counting does). Only runs of `_SHORTEST` lines or more are
    kept (most pairs of equal lines are single blank lines); a question whose answer is shorter,
    and a small range, are left to difflib."""

    _SMALL = 64  # lines: below this on either side, difflib's own search is cheap
    _SHORTEST = 4
    _buckets: list[tuple[int, list[int], list[tuple[int, int]]]] | None = None

    def find_longest_match(self, alo: int = 0, ahi: int | None = None, blo: int = 0,
                           bhi: int | None = None) -> difflib.Match:
        ahi = len(self.a) if ahi is None else ahi
        bhi = len(self.b) if bhi is None else bhi
        if ahi - alo < self._SMALL or bhi - blo < self._SMALL:
            return super().find_longest_match(alo, ahi, blo, bhi)
        if self._buckets is None:
            self._buckets = self._runs()
        besti, bestj, bestsize = alo, blo, 0
        for length, starts, runs in self._buckets:
            if length < bestsize:
                break
            for at in range(bisect_left(starts, alo - length + 1), bisect_left(starts, ahi)):
                i, j = runs[at]
                skip = max(0, alo - i, blo - j)
                size = min(length, ahi - i, bhi - j) - skip
                if size <= 0 or size < bestsize:
                    continue
                if size > bestsize or (i + skip, j + skip) < (besti, bestj):
                    besti, bestj, bestsize = i + skip, j + skip, size
                if size == length:
                    break  # whole and first: the bucket's later runs start later and are no longer
        if bestsize < self._SHORTEST:  # a shorter run may be longer inside the range: difflib decides
            return super().find_longest_match(alo, ahi, blo, bhi)
        return difflib.Match(besti, bestj, bestsize)

    def _runs(self) -> list[tuple[int, list[int], list[tuple[int, int]]]]:
        """(length, starts in `a`, (start in `a`, start in `b`)) per run length, longest first, for
        runs of at least `_SHORTEST` lines; runs in the order of their start in `a`, then in `b`.
        Found as runs of equal windows of `_SHORTEST` lines (a run of n windows: n + width - 1 lines)."""
        width, a, b = self._SHORTEST, self.a, self.b
        windows: dict[tuple, list[int]] = {}
        for j in range(len(b) - width + 1):
            windows.setdefault(tuple(b[j:j + width]), []).append(j)
        found: list[list[int]] = []
        previous: dict[int, int] = {}  # j -> the run holding the window pair (i - 1, j) of the last row
        for i in range(len(a) - width + 1):
            current: dict[int, int] = {}
            for j in windows.get(tuple(a[i:i + width]), ()):
                run = previous.get(j - 1)
                if run is None:
                    run = len(found)
                    found.append([i, j, width - 1])
                found[run][2] += 1
                current[j] = run
            previous = current
        by_length: dict[int, list[tuple[int, int]]] = {}
        for i, j, length in found:  # made in (i, j) order: each bucket stays sorted
            by_length.setdefault(length, []).append((i, j))
        return [(length, [i for i, _ in runs], runs) for length, runs in sorted(by_length.items(), reverse=True)]


_MENTIONS = re.compile(r"\b(lines?(?:\(s\))?) (\d+(?:(?:-|, | and )\d+)*)")


def relabel(message: str, line_of: LineMap) -> str:
    """`message` with each "line 12", "lines 3-5", "line(s) 4, 9" naming original lines."""
    if line_of is identity:
        return message

    def replace(match: re.Match) -> str:
        numbers = re.sub(r"\d+", lambda n: str(line_of(int(n.group()))), match.group(2))
        return f"{match.group(1)} {numbers}"

    return _MENTIONS.sub(replace, message)
