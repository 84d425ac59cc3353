"""The lazy scope analysis answers like libcst's own QualifiedNameProvider.

Rules decide "is this torch.nn.Linear?" through `NameResolver`; the lazy analysis replaced
libcst's whole-file one for speed, so it is checked against it, name by name, on every fixture,
on hand-written scoping corner cases, and on a slice of the installed torch sources.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import libcst as cst
import pytest
from libcst.metadata import QualifiedNameProvider, QualifiedNameSource

from helpers import FIXTURES
from tf_migrate.analysis.names import NameResolver, canonical
from tf_migrate.analysis.nodes import children, parent_map
from tf_migrate.analysis.scopes import Scopes

CORNERS = '''
from . import sibling
from .pkg import thing as alias
import torch.nn
import torch.nn.functional as F
import os.path as osp
from torch import nn, Tensor as T
try:
    from fast import softmax
except ImportError:
    softmax = None
print(len, F.softmax, nn.Linear, osp.join, sibling, alias, softmax)

def outer(x, *args, y=F.relu, **kw):
    import math as F
    g = lambda z, w=nn.GELU: F.sqrt(z) + nn.ReLU
    squares = [F.relu(i) for i in range(torch.nn.functional.relu(x))]
    table = {nn: T for nn in args}
    first = [(last := i) for i in args]
    def inner():
        nonlocal x
        x = 1
        return x, last, F, nn
    return inner, x, y, kw, g

class Block(nn.Module):
    Linear = nn.Linear
    layer = Linear(2, 2)
    names = [Linear for _ in range(2)]

    def forward(self, x):
        global G
        G = Linear
        with open(x) as (handle, other):
            pass
        for nn in x:
            pass
        try:
            pass
        except ValueError as F:
            pass
        return self.layer(x), nn.Linear, F.softmax, G, T

def later():
    return G, torch.sin, Block
'''


def _dotted(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.Name) or (isinstance(node, cst.Attribute) and _dotted(node.value))


def _reference(module: cst.Module) -> dict:
    """libcst's answers for every dotted name outside import statements. (libcst also names
    `super().__init__` or `F.softmax(x).sum` after the call's function; that is not what the
    expression refers to, so those are left out.)"""
    wrapper = cst.MetadataWrapper(module, unsafe_skip_copy=True)
    names = wrapper.resolve(QualifiedNameProvider)
    imports = {n for n in _nodes(module) if isinstance(n, (cst.Import, cst.ImportFrom))}
    skip = {n for i in imports for n in _nodes(i)}
    expected = {}
    for node, found in names.items():
        if _dotted(node) and node not in skip:
            found = found() if callable(found) else found
            expected[node] = {(q.name, q.source is QualifiedNameSource.IMPORT, q.source is QualifiedNameSource.BUILTIN)
                              for q in found if q.source is not QualifiedNameSource.LOCAL}
            if any(q.source is QualifiedNameSource.LOCAL for q in found):
                expected[node].add(("<local>", False, False))
    return expected


def _nodes(root):
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(children(node))


def _mismatches(text: str) -> list[str]:
    module = cst.parse_module(text)
    expected = _reference(module)
    resolver = NameResolver(Scopes(module, parent_map(module), text))
    wrong = []
    for node, want in expected.items():
        want_import = next((n for n, imp, _ in want if imp), None) if len(want) == 1 else None
        want_builtin = next((n for n, _, b in want if b), None) if len(want) == 1 else None
        got_import, got_builtin = resolver.imported(node), resolver.builtin(node)
        if isinstance(node, cst.Attribute):  # libcst names `object.__format__` "builtins.object"
            got_builtin = want_builtin
        want_import = want_import and canonical(want_import)
        if (got_import, got_builtin) != (want_import, want_builtin):
            wrong.append(f"{module.code_for_node(node)!r}: libcst {sorted(want)}, "
                         f"ours imported={got_import} builtin={got_builtin}")
    return wrong


def test_scoping_corner_cases() -> None:
    assert _mismatches(CORNERS) == []


@pytest.mark.parametrize("path", sorted(FIXTURES.rglob("*.py")), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_fixture_names_resolve_like_libcst(path: Path) -> None:
    assert _mismatches(path.read_text()) == []


def _torch_sample() -> list[Path]:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return []
    root = Path(spec.origin).parent
    picks = ["nn/modules/transformer.py", "nn/modules/activation.py", "nn/functional.py",
             "distributions/distribution.py", "_tensor.py", "testing/_internal/common_nn.py"]
    return [root / p for p in picks if (root / p).exists()]


@pytest.mark.parametrize("path", _torch_sample(), ids=lambda p: p.name)
def test_torch_sources_resolve_like_libcst(path: Path) -> None:
    assert _mismatches(path.read_text(encoding="utf-8")) == []


def test_children_match_libcst() -> None:
    module = cst.parse_module(CORNERS + (FIXTURES / "models" / "annotated_encdec.py").read_text())
    for node in _nodes(module):
        assert [id(c) for c in children(node)] == [id(c) for c in node.children], type(node).__name__
