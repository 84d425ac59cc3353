"""A one-line progress bar on stderr, shown only for long runs and only on a terminal."""

from __future__ import annotations

import time
from typing import TextIO

_DELAY_S = 0.5  # runs shorter than this never show a bar
_INTERVAL_S = 0.1


class Progress:
    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.enabled = total > 0 and _isatty(stream)
        self._start = self._drawn = time.monotonic()
        self._shown = False

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if not self.enabled or now - self._start < _DELAY_S or now - self._drawn < _INTERVAL_S:
            return
        self._drawn, self._shown = now, True
        width = 30
        filled = width * self.done // self.total
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} files")
        self.stream.flush()

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
