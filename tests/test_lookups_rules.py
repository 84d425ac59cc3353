"""Rules' own tables (issue 20) answer what the whole-file scans they replaced answered.

As in tests/test_lookups.py: each table is compared, over the fixtures, with the plain scan it
replaced, kept here as the specification.
"""

from __future__ import annotations

import ast

import libcst as cst
import pytest

from helpers import FIXTURES, assert_removes_as_the_visitor
from test_lookups import SOURCES, _parses
from tf_migrate.analysis import census
from tf_migrate.analysis.nodes import _walk
from tf_migrate.engine.context import FileContext

PARSED = [p for p in SOURCES if _parses(p)]


def _context(path) -> FileContext:
    text = path.read_text()
    return FileContext(cst.parse_module(text), str(path), text)


# --- rules/prenorm/stacks.py: the containers a block may be stacked in ----------------------------

@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_stack_containers_answer_as_the_scan_of_every_class(path):
    from tf_migrate.rules.prenorm import stacks

    ctx = _context(path)
    table = stacks._containers_naming(ctx)
    names = {n.value for n in _walk(ctx.module, True) if isinstance(n, cst.Name)}
    for cls in ctx.module_classes:
        assert stacks.class_choices(cls) == stacks._class_choices(cls)
        for sub in cls.submodules.values():
            if sub.callee not in stacks.CONTAINERS:
                continue
            for name in names:  # every name `_stacks` accepts is tried for this container
                if stacks._stacks(ctx, cls, sub.call, name):
                    assert any(c is cls and s is sub for c, s in table.get(name, ())), (cls.qualname, name)
    for block in ctx.module_classes:
        name = block.node.name.value
        scanned = [(cls, sub) for cls in ctx.module_classes for sub in cls.submodules.values()
                   if sub.callee in stacks.CONTAINERS and stacks._stacks(ctx, cls, sub.call, name)
                   and not stacks._changed_later(ctx, cls, sub)]
        looked_up = [(cls, sub) for cls, sub in table.get(name, ())
                     if stacks._stacks(ctx, cls, sub.call, name) and not stacks._changed_later(ctx, cls, sub)]
        assert [(id(c), id(s)) for c, s in looked_up] == [(id(c), id(s)) for c, s in scanned]


# --- rules/prenorm/tree.py, residual.py: class names and norm questions, answered once ---------------

def _resolve_class_scan(fctx, name):
    """`resolve_class` as it was, for the file's own classes: a scan of every module class."""
    for cls in fctx.module_classes:
        if cls.node.name.value == name and "." not in cls.qualname:
            return fctx, cls
    return None


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_prenorm_class_and_norm_look_ups_answer_as_their_scans(path):
    from tf_migrate.rules.prenorm import tree
    from tf_migrate.rules.prenorm.residual import ResidualFinder

    ctx = _context(path)
    names = {n.value for n in _walk(ctx.module, True) if isinstance(n, cst.Name)}
    for name in names:
        scanned = _resolve_class_scan(ctx, name)
        if scanned is not None:
            assert tree.resolve_class(ctx, name) == scanned and tree.resolve_class(ctx, name)[1] is scanned[1]
        else:
            assert name not in tree._top_level_classes(ctx)
    for cls in ctx.module_classes:
        for _ in range(2):  # the second answer comes from the memo
            assert tree.own_norm_parameters(ctx, cls) == tree._own_norm_parameters(ctx, cls)
        for method in cls.methods.values():
            finder = ResidualFinder(ctx, cls, method)
            for node in _walk(method, True):
                if isinstance(node, (cst.Name, cst.Attribute, cst.Subscript, cst.Call)):
                    assert finder.is_norm(node) == finder._is_norm(node) == finder.is_norm(node)


# --- rules/prenorm/census.py: the classes built for an attribute ----------------------------------

def _built_names_scan(index, cls, attribute: str) -> set[str]:
    """`_built_names` as it was: every call of the file tested per class and attribute."""
    values = cls.attributes.get(attribute, ())
    names = {n.func.id for v in values for n in ast.walk(v) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    init = cls.methods.get("__init__")
    if init is None:
        return names
    parameters = [a.arg for a in init.args.posonlyargs + init.args.args][1:]
    passed = {n.id for v in values for n in ast.walk(v) if isinstance(n, ast.Name) and n.id in parameters}
    for call in index.calls if passed else ():
        if not (isinstance(call.func, ast.Name) and call.func.id == cls.node.name):
            continue
        given = [(parameters[i], a) for i, a in enumerate(call.args[:len(parameters)])
                 if not isinstance(a, ast.Starred)] + [(k.arg, k.value) for k in call.keywords]
        names |= {n.func.id for name, value in given if name in passed for n in ast.walk(value)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return names


def test_prenorm_built_names_answer_as_the_scan_of_every_call():
    from tf_migrate.rules.prenorm import census as prenorm

    passed = 0
    for path in PARSED:
        index = census.FileIndex(ast.parse(path.read_text()))
        for cls in index.classes:
            for attribute in cls.attributes:
                expected = _built_names_scan(index, cls, attribute)
                assert prenorm._built_names(index, cls, attribute) == expected, (path.name, cls.qualname, attribute)
                passed += bool(expected - _built_names_scan_values_only(cls, attribute))
    assert passed  # some fixture builds a stack from what its callers pass


def _built_names_scan_values_only(cls, attribute: str) -> set[str]:
    return {n.func.id for v in cls.attributes.get(attribute, ()) for n in ast.walk(v)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


# --- rules/fused_qkv/projections.py: references from outside a class --------------------------------

def _foreign_attribute_scan(ctx, cls, names):
    """`foreign_attribute` as it was: every `.<name>` of the file, walked up to its class, per class."""
    from tf_migrate.rules.fused_qkv.projections import _own_attribute_elsewhere

    own = {id(ref) for name in names for ref in cls.self_references(name)}
    found = (n for name in names for n in ctx.index.attributes(ctx.module, name))
    for node in sorted(found, key=ctx.line):
        if id(node) not in own and not _own_attribute_elsewhere(ctx, cls, node):
            return (f"`{ctx.code(node)}` on line {ctx.line(node)} reaches `{node.attr.value}` from "
                    "outside its class (a subclass or another object)")
    return None


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_foreign_attributes_answer_as_the_scan_of_every_reference(path):
    from tf_migrate.rules.fused_qkv.projections import foreign_attribute, triples

    ctx = _context(path)
    for cls in ctx.module_classes:
        attributes = list(cls.submodules) + list(cls.buffers)
        asked = [[name] for name in attributes] + [[t.attributes[r] for r in "qkv"] for t in triples(attributes)]
        asked += [list(reversed(attributes))] if attributes else []
        for names in asked:
            assert foreign_attribute(ctx, cls, names) == _foreign_attribute_scan(ctx, cls, names), (cls.qualname, names)


def test_foreign_attributes_are_found_in_subclasses_and_other_objects():
    from tf_migrate.rules.fused_qkv.projections import foreign_attribute

    text = (
        "import torch.nn as nn\n\n"
        "class A(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.q = nn.Linear(2, 2)\n\n"
        "class B(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.q = nn.Linear(2, 2)\n\n"
        "class C(A):\n"
        "    def forward(self, x):\n        return self.q(x)\n\n"
        "def use(b):\n    return b.q\n"
    )
    ctx = FileContext(cst.parse_module(text), "t.py", text)
    a, b = ctx.module_classes[:2]
    assert "line 15" in foreign_attribute(ctx, a, ["q"])  # the subclass C's `self.q`
    assert "line 18" in foreign_attribute(ctx, b, ["q"])  # `b.q`; C's `self.q` is A's
    assert foreign_attribute(ctx, a, ["q"]) == _foreign_attribute_scan(ctx, a, ["q"])
    assert foreign_attribute(ctx, b, ["q"]) == _foreign_attribute_scan(ctx, b, ["q"])


# --- engine/edits.py: the imports the fixes of many classes may free -------------------------------

REPEATED = [
    ("import math\nimport numpy as np\n\ndef f(x):\n    return math.sqrt(x) + np.ones(2)\n", True),
    ("import math\nimport numpy as np\n\ndef f(x):\n    return math.sqrt(x)\n", False),  # np unused
    ("import math\nimport numpy as np\n\ndef f(x):\n    import math\n    return np.ones(2)\n", False),
]


@pytest.mark.parametrize("source, used", REPEATED)
def test_a_name_freed_by_many_fixes_is_read_once_and_answered_as_each_alone(source, used, monkeypatch):
    from tf_migrate.engine import edits

    removals = [("math", None, None), ("numpy", None, "np")] * 5
    assert all(edits.still_used(source, [removal]) for removal in removals) is used
    asked = []
    original = edits._kept
    monkeypatch.setattr(edits, "_kept", lambda top, name: asked.append(name) or original(top, name))
    assert edits.still_used(source, removals) is used
    assert len(asked) == len(set(asked))  # each name's scopes are read once, not once per fix
    assert_removes_as_the_visitor(source, removals)


# --- per-file tables of TFM201's tree walk and census, TFM102's initialisers -----------------------

@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_holders_post_norm_classes_and_fan_inits_answer_as_their_scans(path):
    from tf_migrate.analysis.census import walker
    from tf_migrate.rules.fused_qkv import fan_inits
    from tf_migrate.rules.prenorm import census as prenorm
    from tf_migrate.rules.prenorm.tree import holders

    ctx = _context(path)
    for cls in ctx.module_classes:
        name = cls.node.name.value
        scanned = [(ctx, holder, sub) for holder in ctx.module_classes if holder is not cls
                   for sub in holder.submodules.values()
                   if isinstance(sub.call.func, cst.Name) and sub.call.func.value == name]
        assert [(id(h), id(s)) for _, h, s in holders(ctx, cls)] == [(id(h), id(s)) for _, h, s in scanned]
    sites = prenorm._post_norm_sites(ctx)
    for info in walker(ctx).index.classes:
        assert (id(info) in prenorm._post_norm_classes(ctx)) == any(f.cls is info for f in sites)
    for dim in (0, 1):
        expected = [call for call in fan_inits._generic_calls(ctx) if fan_inits._reads_dim(ctx, call, dim)]
        assert fan_inits.generic_shape_inits(ctx, dim) == expected
        assert fan_inits.generic_shape_inits(ctx, dim) == expected  # answered from the memo


def test_prenorm_loops_over_an_attribute_answer_as_the_walk_per_attribute():
    from tf_migrate.rules.prenorm import census as prenorm

    found = 0
    for path in PARSED:
        index = census.FileIndex(ast.parse(path.read_text()))
        for cls in index.classes:
            for attribute in [*cls.attributes, "absent_attribute"]:
                expected = [node.lineno for node in ast.walk(cls.node) if isinstance(node, ast.For)
                            and any(census.self_attribute(n) == attribute for n in ast.walk(node.iter))]
                assert prenorm._loops_over(cls, attribute) == expected, (path.name, cls.qualname, attribute)
                found += bool(expected)
    assert found  # some fixture loops over a stack
