"""One printing gives a module's code and the positions libcst's PositionProvider gives its nodes.

Compared node for node with the provider on every fixture and on files with unusual line ends,
indentation and strings; the engine's contexts read positions from here.
"""

from __future__ import annotations

import libcst as cst
import pytest
from libcst.metadata import PositionProvider

from helpers import FIXTURES
from tf_migrate.engine.printed import positions, printed

SOURCES = sorted(FIXTURES.rglob("*.py"))
ODD = [
    "",
    "x = 1",
    "x = 1\r\ny = [\r\n    2,\r\n]\r\n",
    "x = 1\ry = 2\r",
    "if x:\n\ty = '''a\nb\r\nc'''\n\tz = 3 \\\n  + 4\n",
    "# header\n\n\nclass A:  # c\n\n    @dec\n    def f(self, *a, **k) -> 'T':\n        return (a)[0] if k else lambda: (yield)\n",
    "x = 1\r\n# a comment without a line end",
    "def f():\n    pass\n\n\n\n",
    "s = 'a\\\nb'\nt = f'{x!r:>{w}}'\n",
]


def _assert_same(module: cst.Module) -> None:
    expected = cst.MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    code, found = printed(module)
    assert code == module.code
    assert set(found) == set(expected)
    for node, where in expected.items():
        assert found[node] == where, (type(node).__name__, module.code_for_node(node))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_positions_of_every_fixture_node(path):
    _assert_same(cst.parse_module(path.read_text()))


@pytest.mark.parametrize("source", ODD)
def test_positions_in_unusual_files(source):
    _assert_same(cst.parse_module(source))


def test_positions_of_a_rewritten_module():
    module = cst.parse_module("import math\n\n\ndef f(x):\n    return x / math.sqrt(2)\n")
    rewritten = module.with_changes(body=[cst.parse_statement("import torch\n"), *module.body])
    _assert_same(rewritten)
    assert positions(rewritten)[rewritten.body[2]].start.line == 5
