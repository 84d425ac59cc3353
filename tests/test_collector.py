"""The cycle collector is paused while a file is analysed and frees the file's cyclic garbage when
it is done (engine/collector.py)."""

from __future__ import annotations

import gc
import io
import subprocess
import sys
import weakref
from collections import Counter
from contextlib import contextmanager

import pytest

from helpers import FIXTURES, MODEL_SOURCES
from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine import collector
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import select_rules
from tf_migrate.engine.run import RunOptions, run


SOURCE = "import torch.nn as nn\n\n\nclass Block(nn.Module):\n    pass\n"


class _Cyclic:
    pass


class _Probe:
    """A rule-shaped object (not a registered Rule): records the collector's state, leaves a cycle."""

    code = "TFM999"
    triggers = ("nn.Module",)
    outside_modules: tuple[str, ...] = ()
    free_functions = False

    def __init__(self) -> None:
        self.enabled: list[bool] = []
        self.cycle = None

    def check(self, ctx):
        self.enabled.append(gc.isenabled())
        garbage = _Cyclic()
        garbage.itself = garbage
        self.cycle = weakref.ref(garbage)
        return iter(())

    def census(self, ctx):
        return ()


def test_paused_while_a_file_is_analysed_and_its_cycles_freed_at_the_end(tmp_path):
    _assert_paused_and_cycles_freed(tmp_path)


def _assert_paused_and_cycles_freed(tmp_path):
    probe = _Probe()
    thresholds = gc.get_threshold()
    gc.set_threshold(10**9)  # no automatic collection could free the cycle
    try:
        assert gc.isenabled()
        migrate_source(SOURCE, str(tmp_path / "model.py"), [probe])
        assert probe.enabled == [False]
        assert gc.isenabled()
        assert probe.cycle() is None  # freed by the collection at the end
    finally:
        gc.set_threshold(*thresholds)


def test_a_caller_that_turned_the_collector_off_keeps_it_off(tmp_path):
    probe = _Probe()
    gc.disable()
    try:
        migrate_source(SOURCE, str(tmp_path / "model.py"), [probe])
        assert not gc.isenabled()
        assert probe.cycle() is not None  # the caller's collector, the caller's collections
    finally:
        gc.enable()


@pytest.mark.parametrize("path", MODEL_SOURCES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_a_migrated_file_leaves_no_cyclic_garbage(path):
    """What the analysis of a file made is freed by reference counting once the engine is done with
    it: a reference cycle through a context or an analysis would hold a whole version of the file
    (its nodes, index and tables) until the collection at the end of the file, which then walks
    it all (FileContext.release, and no analysis holding its own bound method or a recursive
    closure)."""
    rules = [rule() for rule in select_rules(["all"])]
    project = ProjectIndex.for_files([path])  # the run's index outlives the file: held here
    gc.collect()
    gc.disable()  # a caller's collector off: the engine leaves collections to it
    try:
        migrate_source(path.read_text(), str(path), rules, project)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        # (libcst's own scope analysis, run by its import codemods on a file's head, leaves cycles)
        ours = [o for o in gc.garbage if type(o).__module__.startswith("tf_migrate")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not ours, Counter(type(o).__qualname__ for o in ours).most_common(8)


def test_the_report_is_written_with_the_heap_frozen_and_thawed_after(tmp_path, monkeypatch):
    """The report of a run walks nothing the run kept: a full collection there would (engine/run.py)."""
    from tf_migrate.engine import run as running

    source = tmp_path / "model.py"
    source.write_text(SOURCE)
    during = []
    printing = running._print
    monkeypatch.setattr(running, "_print", lambda *a: (during.append(gc.get_freeze_count()), printing(*a)))
    gc.unfreeze()  # a clean start: nothing frozen by anyone
    run(RunOptions(paths=[source], use_cache=False), io.StringIO())
    assert during and during[0] > 0
    assert gc.get_freeze_count() == 0  # a library caller gets its collector back as it was


def test_a_caller_that_froze_objects_keeps_them_frozen():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with collector.frozen():
            pass
        assert gc.get_freeze_count() >= frozen > 0
    finally:
        gc.unfreeze()


def test_the_command_line_freezes_the_heap_before_the_interpreter_tears_down(tmp_path):
    """An exit handler registered first runs last: it sees what `frozen_at_exit`'s handler did."""
    source = tmp_path / "model.py"
    source.write_text(SOURCE)
    program = ("import atexit, gc, sys\n"
               "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, file=sys.stderr))\n"
               "from tf_migrate.cli import main\n"
               "main()")
    done = subprocess.run([sys.executable, "-c", program, str(source), "--no-cache"], capture_output=True,
                          text=True)
    assert done.stderr.endswith("frozen True\n"), done.stderr


def test_the_command_line_freezes_what_a_file_leaves_instead_of_collecting_it(tmp_path):
    """In the tool's own process the young generations are not walked at each file's end (what
    survives a file is kept by the run: the walk frees next to nothing); a library caller's are
    (the first test here)."""
    for name in ("a.py", "b.py"):  # each one a rule reads (its trigger: Linear)
        (tmp_path / name).write_text(SOURCE + "\n    def __init__(self):\n        self.proj = nn.Linear(4, 4)\n")
    program = ("import gc, sys\n"
               "from tf_migrate.engine import collector\n"
               "calls = []\n"
               "class Recording:\n"
               "    def __getattr__(self, name):\n"
               "        found = getattr(gc, name)\n"
               "        if name in ('collect', 'freeze'):\n"
               "            return lambda *a: (calls.append(name), found(*a))[1]\n"
               "        return found\n"
               "collector.gc = Recording()\n"
               "from tf_migrate.cli import main\n"
               "try:\n"
               "    main()\n"
               "finally:\n"
               "    print(calls, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", program, str(tmp_path), "--no-cache", "-j", "1"],
                          capture_output=True, text=True)
    # one freeze per file; the report's (`frozen`) finds the heap frozen already
    assert done.stderr.splitlines()[-1] == "['freeze', 'freeze']", done.stderr


def test_a_command_line_run_in_the_callers_process_leaves_its_collector_as_it_was(tmp_path, monkeypatch):
    """The freezing is the run's: after it (a test invoking the CLI in-process) nothing stays frozen
    and the next file's cycles are collected again."""
    from click.testing import CliRunner

    from tf_migrate.cli import main

    source = tmp_path / "model.py"
    source.write_text(SOURCE + "\n    def __init__(self):\n        self.proj = nn.Linear(4, 4)\n")
    gc.unfreeze()
    frozen_inside = []
    pause = collector.paused

    @contextmanager
    def watching():
        with pause():
            yield
        frozen_inside.append(gc.get_freeze_count())

    monkeypatch.setattr(collector, "paused", watching)
    CliRunner().invoke(main, [str(source), "--no-cache", "-j", "1"], catch_exceptions=False)
    monkeypatch.undo()
    assert frozen_inside and frozen_inside[0] > 0  # the run froze what its file left
    assert gc.get_freeze_count() == 0
    _assert_paused_and_cycles_freed(tmp_path)
