"""Python's cycle collector paused while one file is analysed.

A run keeps what later files' questions need (the whole-tree index, other files' census tables:
about 4.5 M objects in the torch tree), and the analysis of one file allocates millions of objects
of its own. With the collector on, the full collections those allocations trigger walk every live
object again and again: 40 % of the CPU on mid-sized torch files, a quarter on the N-copies file
(benchmarks/results/growth.md). Paused, a file's cyclic garbage waits for the end of the file,
where one collection of the young generations -- the objects the file made -- frees it; full
collections are left to CPython's own rule between files. The analysis itself leaves no cycles
(the engine releases each version's context: tests/test_collector.py), so a version a fix
replaced is freed at once, not at the file's end (the N-copies file at N = 256: peak 2.05 GB,
against 2.54 GB while the versions waited). Once the command line's files are analysed, what the
run keeps is frozen (`settle`).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside; one of the young generations at the end. Where the collector
    is off already, its owner decides: nothing is changed."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.collect(1)
        gc.enable()


def settle() -> None:
    """Every object alive now stays alive until the process ends (the command line, its files
    analysed): out of the collector's view. A full collection walks them all and frees nothing --
    3.8 s once while the report is written after a one-process run over the torch tree, then
    12.6 s in the interpreter's teardown (benchmarks/results/growth.md, perf8)."""
    gc.freeze()
