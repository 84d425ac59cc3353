"""Python's cycle collector paused while one file is analysed.

A run keeps what later files' questions need (the whole-tree index, other files' census tables:
about 4.5 M objects in the torch tree), and the analysis of one file allocates millions of objects
of its own. With the collector on, the full collections those allocations trigger walk every live
object again and again: 40 % of the CPU on mid-sized torch files, a quarter on the N-copies file
(benchmarks/results/growth.md). Paused, a file's cyclic garbage waits for the end of the file,
where one collection of the young generations -- the objects the file made -- frees it; full
collections are left to CPython's own rule between files. In the command line's own processes
that collection is not made: what a file leaves is frozen instead (`owned`). The analysis
itself leaves no cycles (the engine releases each version's context: tests/test_collector.py), so
a version a fix replaced is freed at once, not at the file's end (the N-copies file at N = 256:
peak 2.05 GB, against 2.54 GB while the versions waited). What a run keeps is not walked again by the full
collections that would come while its report is written and while the interpreter tears down.
"""

from __future__ import annotations

import atexit
import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside; one of the young generations at the end (in the tool's own
    processes, a freeze: `owned`). Where the collector is off already, its owner decides:
    nothing is changed."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if _owned:
            gc.freeze()
        else:
            gc.collect(1)
        gc.enable()


@contextmanager
def owned() -> Iterator[None]:
    """Inside, this process runs the tool and nothing else (the command line's run, and the workers
    it forks): what a file's analysis leaves alive is frozen when the file is done instead of
    collected. That collection walks every survivor (the file's tree, kept by the whole-tree index,
    and what its questions summarised) and frees next to nothing: the analysis leaves no cycles
    (tests/test_collector.py), only libcst's import codemods do, a few hundred objects a file
    (1,952 in all over the torch tree, against 2.3 s of collections: benchmarks/results/growth.md,
    perf9); those few wait for the run's end. On the way out everything is thawed: a caller running
    the command line in its own process (a test) gets its collector back as it was. A caller that
    froze objects itself, or a run inside a run, changes nothing."""
    global _owned
    if _owned or gc.get_freeze_count():
        yield
        return
    _owned = True
    try:
        yield
    finally:
        _owned = False
        gc.unfreeze()


_owned = False


@contextmanager
def frozen() -> Iterator[None]:
    """Every object alive on entry is out of the collector's view inside: for the report of a run,
    which keeps them all (results, the whole-tree index) and makes no cyclic garbage. A full
    collection there walks them all and frees nothing: 3.8 s after a one-process run over the torch
    tree (benchmarks/results/growth.md, perf8). A caller that froze objects itself keeps them so."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def frozen_at_exit() -> None:
    """At the interpreter's exit, before it tears down, every object is moved out of the collector's
    view: the teardown's full collections walk all that a run kept and free nothing (12.6 s after a
    one-process run over the torch tree). For the command line; registered once per process."""
    global _freezing_at_exit
    if not _freezing_at_exit:
        atexit.register(gc.freeze)
        _freezing_at_exit = True


_freezing_at_exit = False
