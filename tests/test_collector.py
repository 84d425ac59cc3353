"""The cycle collector is paused while a file is analysed and frees the file's cyclic garbage when
it is done (engine/collector.py)."""

from __future__ import annotations

import gc
import weakref

from tf_migrate.engine.file import migrate_source

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
