"""The per-file index answers as the walks it replaced, and a file's analysis grows linearly.

Look-ups are compared with `nodes.find` / `walk` / `parent_map` on every fixture; the import
shortcuts of `engine.edits` with the libcst visitors they stand in for; fix conflicts are refused
before anything is applied; walk steps (load-independent) grow in proportion to the file.
"""

from __future__ import annotations

import sys

import libcst as cst
import pytest
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, RemoveImportsVisitor

from helpers import FIXTURES, ROOT
from tf_migrate.analysis import nodes
from tf_migrate.analysis.index import NodeIndex
from tf_migrate.analysis.nodes import find, parent_map, walk
from tf_migrate.engine.edits import FixConflict, add_imports, apply_fixes, still_used
from tf_migrate.engine.rule import Fix

SOURCES = sorted(FIXTURES.rglob("*.py"))
KINDS = [cst.Call, cst.Attribute, cst.Name, cst.SimpleString, cst.Assign, (cst.Call, cst.BinaryOperation)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_look_ups_match_walks(path):
    module = cst.parse_module(path.read_text())
    index = NodeIndex(module)
    assert index.parents == parent_map(module)
    scopes = [module] + find(module, lambda n: isinstance(n, (cst.ClassDef, cst.FunctionDef)))
    for within in scopes:
        for into in (True, False):
            below = list(walk(within, into_scopes=into))  # what `nodes.find` filters
            for kinds in KINDS:
                expected = [n for n in below if isinstance(n, kinds)]
                assert index.of_type(within, kinds, into_scopes=into) == expected
        below = list(walk(within))
        for name in {n.value for n in below if isinstance(n, cst.Name)}:
            assert index.names(within, name) == [n for n in below if isinstance(n, cst.Name) and n.value == name]
            assert index.attributes(within, name) == [
                n for n in below if isinstance(n, cst.Attribute) and n.attr.value == name]
            assert index.calls_of(within, name) == [
                n for n in below if isinstance(n, cst.Call) and isinstance(n.func, cst.Name) and n.func.value == name]
    for node in walk(module):
        for kind in (cst.FunctionDef, cst.ClassDef):
            current = index.parents.get(node)
            while current is not None and not isinstance(current, kind):
                current = index.parents.get(current)
            assert index.enclosing(node, kind) is current


def test_a_node_in_two_places_keeps_its_first_parent():
    shared = cst.Name("x")
    module = cst.Module(body=[cst.SimpleStatementLine([cst.Expr(shared)]), cst.SimpleStatementLine([cst.Expr(shared)])])
    index = NodeIndex(module)
    assert index.parents == parent_map(module)
    assert index.of_type(module, cst.Name) == find(module, lambda n: isinstance(n, cst.Name)) == [shared, shared]


def _statement(module: cst.Module, index: int) -> cst.SimpleStatementLine:
    return module.body[index]


def test_two_fixes_replacing_one_node_conflict():
    module = cst.parse_module("a = 1\nb = 2\n")
    first = _statement(module, 0)
    fixes = [Fix(1, "one", {first: cst.RemoveFromParent()}), Fix(1, "two", {first: first.with_changes()})]
    with pytest.raises(FixConflict, match="both replace one node"):
        apply_fixes(module, fixes, parent_map(module))


def test_an_edit_inside_another_fixs_plain_replacement_conflicts():
    module = cst.parse_module("def f():\n    a = 1\n")
    function = module.body[0]
    inner = function.body.body[0]
    outer = Fix(1, "outer", {function: function.with_changes(name=cst.Name("g"))})
    nested = Fix(2, "inner", {inner: cst.RemoveFromParent()})
    with pytest.raises(FixConflict, match="holds the edit"):
        apply_fixes(module, [outer, nested], parent_map(module))
    wrapping = Fix(1, "outer", {function: lambda updated: updated.with_changes(name=cst.Name("g"))})
    assert apply_fixes(module, [wrapping, nested], parent_map(module)).code == "def g():\n    pass\n"


HEADS = [
    "import os\nimport sys\n\nx = 1\n",
    '"""Doc."""\nfrom torch import nn\nclass A:\n    import math\n',
    "from __future__ import annotations\nfrom torch.nn import init\n\n\ndef f():\n    pass\n",
    "x = 1\nimport torch\n",
    "",
    "import torch\n",
    "__strict__ = True\nimport torch\ny = 2\n",
]
ADDED = [("torch.nn.functional", None, "F"), ("torch.nn", "init", None), ("math", None, None)]


@pytest.mark.parametrize("source", HEADS)
@pytest.mark.parametrize("request_", ADDED)
def test_imports_added_over_the_head_as_over_the_whole_module(source, request_):
    expected_context, context = CodemodContext(), CodemodContext()
    AddImportsVisitor.add_needed_import(expected_context, *request_)
    AddImportsVisitor.add_needed_import(context, *request_)
    module = cst.parse_module(source)
    assert add_imports(module, context).code == AddImportsVisitor(expected_context).transform_module(module).code


FREED = [
    ("import math\n\ndef f(x):\n    return math.sqrt(x)\n", True),
    ("import math\n\ndef f(x):\n    return x\n", False),  # unused: the visitor removes it
    ("import math\n\ndef f(x):\n    math = 2\n    return math\n", False),  # a local shadows it
    ("import math\n\ndef f(x):\n    import math\n    return math.pi\n", False),  # a local import
    ("import math\nprint(math.pi)\n", True),
    ("import math\n\nclass A:\n    scale = math.pi\n", True),
    ("import numpy as np\n\ndef f():\n    return np.ones(2)\n", True),
    ("import torch\n\ndef f():\n    return torch.ones(2)\n", True),  # nothing to remove: no `import math`
    ("import numpy\n\ndef f():\n    return 1\n", False),
]


@pytest.mark.parametrize("source, used", FREED)
def test_freed_imports_skip_the_scope_pass_only_when_certainly_read(source, used):
    removal = (("numpy", None, "np") if "as np" in source else ("numpy", None, None) if "numpy" in source
               else ("math", None, None))
    assert still_used(source, [removal]) is used
    context = CodemodContext()
    RemoveImportsVisitor.remove_unused_import(context, *removal)
    kept = RemoveImportsVisitor(context).transform_module(cst.parse_module(source)).code == source
    assert kept or not used  # never skipped where the visitor would have removed something


def test_walk_steps_grow_linearly_with_the_file():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from growth import counting, n_copies

    from tf_migrate.engine.file import migrate_source
    from tf_migrate.engine.registry import all_rules

    rules = [rule() for rule in all_rules()]
    text = (ROOT / "fixtures/models/einsum_gpt.py").read_text()
    steps = []
    for copies in (1, 4):
        with counting() as counts:
            result = migrate_source(n_copies(text, copies), f"copies_{copies}.py", rules)
        assert not result.errors and len(result.edits) == 6 * copies
        steps.append(counts["walk"])
    assert steps[1] <= 4.2 * steps[0], steps  # a whole-module search per class makes this ~5x
    assert nodes.children.__name__ == "children"  # the counter is gone again
