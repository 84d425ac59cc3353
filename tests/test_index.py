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

from helpers import FIXTURES, ROOT, assert_removes_as_the_visitor
from tf_migrate.analysis import nodes
from tf_migrate.analysis.index import NodeIndex
from tf_migrate.analysis.nodes import _walk, parent_map
from tf_migrate.engine.edits import FixConflict, _spelled, add_imports, apply_fixes, still_used
from tf_migrate.engine.rule import Fix

SOURCES = sorted(FIXTURES.rglob("*.py"))


def walk(node, into_scopes=True):
    """The plain walk (`nodes.walk` answers from a remembered index: comparing with it proves nothing)."""
    return _walk(node, into_scopes)


def find(node, predicate, into_scopes=True):
    return [n for n in walk(node, into_scopes) if predicate(n)]


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
    for node in walk(module):
        if isinstance(node, (cst.BaseStatement, cst.BaseSmallStatement, cst.IndentedBlock, cst.Call)):
            for into in (True, False):
                assert list(nodes.walk(node, into)) == list(walk(node, into))  # answered by the index


def test_a_node_in_two_places_keeps_its_first_parent():
    shared = cst.Name("x")
    module = cst.Module(body=[cst.SimpleStatementLine([cst.Expr(shared)]), cst.SimpleStatementLine([cst.Expr(shared)])])
    index = NodeIndex(module)
    assert index.parents == parent_map(module)
    assert index.of_type(module, cst.Name) == find(module, lambda n: isinstance(n, cst.Name)) == [shared, shared]
    assert index.shared and index not in nodes._INDEXES  # walks of this tree are not answered from it


class _Recording(cst.CSTVisitor):
    """Records every visit and leave; does not enter calls, names a lambda's parameters only."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, cst.CSTNode]] = []

    def on_visit(self, node):
        self.seen.append(("visit", node))
        return super().on_visit(node)

    def on_leave(self, node):
        self.seen.append(("leave", node))
        super().on_leave(node)

    def visit_Call(self, node):
        return False

    def visit_Lambda(self, node):
        node.params.visit(self)
        return False


@pytest.mark.parametrize("path", SOURCES[::7], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_visit_without_rebuilding_calls_the_visitor_as_libcst_does(path):
    module = cst.parse_module(path.read_text())
    expected, found = _Recording(), _Recording()
    module.visit(expected)
    nodes.visit(module, found)
    assert len(found.seen) == len(expected.seen) and all(
        a[0] == b[0] and a[1] is b[1] for a, b in zip(found.seen, expected.seen))


def test_a_visitor_with_field_hooks_is_walked_by_libcst():
    class FieldHook(cst.CSTVisitor):
        def __init__(self) -> None:
            self.fields = 0

        def visit_Call_func(self, node):
            self.fields += 1

    visitor = FieldHook()
    nodes.visit(cst.parse_module("f(g(x))\n"), visitor)
    assert visitor.fields == 2


def test_a_walk_answered_by_the_index_of_an_older_tree_still_holds():
    module = cst.parse_module("def f(x):\n    return g(x) + 1\n")
    NodeIndex(module)
    function = module.body[0]
    expected = list(walk(function.body, into_scopes=False))
    rebuilt = module.with_changes(body=[function, cst.parse_statement("y = 2\n")])  # shares `function`
    assert list(nodes.walk(function.body, into_scopes=False)) == expected
    assert list(nodes.walk(rebuilt)) == list(walk(rebuilt))  # not indexed: walked


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


def test_only_the_paths_to_replaced_nodes_are_visited_and_the_result_is_the_same():
    module = cst.parse_module("import math\n\nclass A:\n    def f(self, x):\n        return x * 2\n\n"
                              "class B:\n    def g(self, y):\n        return y + math.pi\n")
    index = NodeIndex(module)
    body = module.body[1].body.body[0].body.body[0].body[0]  # `return x * 2`
    fixes = [Fix(5, "one", {body.value: cst.parse_expression("x * 3")})]
    visited = []

    class Counting(cst.CSTTransformer):
        def on_visit(self, node):
            visited.append(node)
            return True

    assert apply_fixes(module, fixes, index.parents, index).code == apply_fixes(module, fixes, index.parents).code
    module.visit(Counting())
    total = len(visited)
    from tf_migrate.engine import edits

    calls = []
    original = edits._Replace.on_visit
    edits._Replace.on_visit = lambda self, node: calls.append(node) or original(self, node)
    try:
        apply_fixes(module, fixes, index.parents, index)
    finally:
        edits._Replace.on_visit = original
    assert len(calls) < total / 3  # the class B subtree and the rest of A are not entered
    assert module.body[2] in calls and module.body[2].body not in calls


def test_a_shared_node_is_replaced_in_both_places():
    shared = cst.Name("x")
    module = cst.Module(body=[cst.SimpleStatementLine([cst.Expr(shared)]), cst.SimpleStatementLine([cst.Expr(shared)])])
    index = NodeIndex(module)
    fixed = apply_fixes(module, [Fix(1, "rename", {shared: cst.Name("y")})], index.parents, index)
    assert fixed.code == "y\ny\n"


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


REMOVED = [
    ("import math\nimport torch\n\n\ndef f(x):\n    return torch.relu(x)\n", [("math", None, None)]),
    ('"""Doc."""\nimport math\n\nx = 1\n', [("math", None, None)]),
    ("import math, os\nfrom torch import einsum, nn  # kept\n\nclass A(nn.Module):\n    pass\n",
     [("math", None, None), ("torch", "einsum", None)]),
    ("from torch import (\n    einsum,  # the old way\n    nn,\n)\n\nclass A(nn.Module):\n    pass\n",
     [("torch", "einsum", None)]),
    ("import numpy as np\nimport math\n\ndef f():\n    return math.pi\n", [("numpy", None, "np"), ("math", None, None)]),
    ("import math\n\n__all__ = ['math']\n", [("math", None, None)]),  # exported: kept
    ("import math\n\ndef f(x: 'math.Foo'):\n    pass\n", [("math", None, None)]),  # a string annotation
    ("import math\n\ndef f():\n    import math\n    return 1\n", [("math", None, None)]),  # a local import
    ("import math\nx = 1\nimport math\n", [("math", None, None)]),  # a second import after the head
    ("# math is gone\nimport math\n\nx = 1\n", [("math", None, None)]),
    ("import torch.nn.functional\n\nx = 1\n", [("torch.nn.functional", None, None)]),
    ("from math import pi\nimport math\n\nx = pi\n", [("math", None, None)]),
    ("x = 1\nimport math\n", [("math", None, None)]),
]


@pytest.mark.parametrize("source, removals", REMOVED)
def test_imports_removed_over_the_head_as_over_the_whole_module(source, removals):
    assert_removes_as_the_visitor(source, removals)


def test_a_name_spelled_only_in_the_head_is_removed_without_visiting_the_rest(monkeypatch):
    from tf_migrate.engine.edits import remove_imports

    seen = []
    original = RemoveImportsVisitor.transform_module
    monkeypatch.setattr(RemoveImportsVisitor, "transform_module",
                        lambda self, tree: seen.append(len(tree.body)) or original(self, tree))
    # `math` leaves a statement that keeps `os`: the visitor re-punctuates it, run over the head
    source = "import math, os\nimport torch\n\n\ndef f(x):\n    return torch.relu(x)\n\n\ndef g():\n    pass\n"
    context = CodemodContext()
    RemoveImportsVisitor.remove_unused_import(context, "math", None, None)
    module = cst.parse_module(source)
    assert remove_imports(module, module.code, [("math", None, None)], context).code == source.replace("math, ", "")
    assert seen == [2]  # the two imports, not the four statements


HEADS = [
    "import math\nimport torch\n\nx = torch.ones(1)\n",
    "# header\n\nimport math  # trailing\n# above torch\nimport torch\n\nx = torch.ones(1)\n",
    '"""Doc."""\n\n# above\nimport math\n\nimport numpy as np\nfrom torch import einsum\n\nx = 1\n',
    "import math as m\nimport numpy\nfrom torch import einsum as e\n\nx = 1\n",
    "import math, numpy\n\nx = 1\n",  # both aliases of one statement go
    "from torch import (\n    einsum,  # old\n    nn,\n)\n\nx = nn\n",  # partial: the visitor decides
    "from __future__ import annotations\nimport math\n\nx = 1\n",
    "from . import math\nfrom .. import numpy\nimport math\n\nx = 1\n",  # relative: never matched
    "from torch import *\nimport math\n\nx = 1\n",
    "import torch.nn.functional\nimport math\n\nx = 1\n",
    "import math\n\nx = 1  # math\n",  # spelled in a comment: the visitor decides
    "import math\n\n__all__ = ['math']\n",
    "import numpy\nimport numpy as np\n\nx = 1\n",  # one alias per module: the last scheduled
    "import math\nimport math\n\nx = 1\n",
]
HEAD_REMOVALS = [("math", None, None), ("math", None, "m"), ("numpy", None, None), ("numpy", None, "np"),
                 ("torch", "einsum", None), ("torch", "einsum", "e"), ("__future__", "annotations", None),
                 ("torch.nn.functional", None, None)]


@pytest.mark.parametrize("source", HEADS)
@pytest.mark.parametrize("count", [1, 2, len(HEAD_REMOVALS)])
def test_imports_read_off_the_head_as_the_visitor_removes_them(source, count):
    named = [removal for removal in HEAD_REMOVALS if removal[0].split(".")[0] in source]
    for first in range(len(named) if count < len(named) else 1):
        removals = (named[first:] + named[:first])[:count]
        assert_removes_as_the_visitor(source, removals)
        if count > 1:
            assert_removes_as_the_visitor(source, removals[::-1])  # one alias per module: the last


def test_every_fixture_head_loses_its_imports_as_with_the_visitor():
    seen_heads = set()  # 525 files share 91 heads: one file per head keeps this test short
    for path in sorted(FIXTURES.rglob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            module = cst.parse_module(source)
        except cst.ParserSyntaxError:
            continue
        per_statement, head = [], ""
        for statement in module.body:
            small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) else None
            if isinstance(small, cst.Import):
                per_statement.append([(alias.evaluated_name, None, alias.evaluated_alias) for alias in small.names])
            elif isinstance(small, cst.ImportFrom) and small.module is not None and not small.relative \
                    and not isinstance(small.names, cst.ImportStar):
                dotted = cst.helpers.get_full_name_for_node(small.module)
                per_statement.append([(dotted, alias.evaluated_name, alias.evaluated_alias) for alias in small.names])
            else:
                continue
            head += module.code_for_node(statement)
        if head in seen_heads:
            continue
        seen_heads.add(head)
        for removals in per_statement:  # the statements the read-off may drop whole (the rest: the visitor)
            if all(_spelled(alias or obj or dotted, source) == 1 for dotted, obj, alias in removals):
                assert_removes_as_the_visitor(source, removals)


def test_whole_unread_imports_are_removed_without_building_the_visitor(monkeypatch):
    from tf_migrate.engine.edits import remove_imports

    built = []
    original = RemoveImportsVisitor.__init__
    monkeypatch.setattr(RemoveImportsVisitor, "__init__",
                        lambda self, *args, **kwargs: built.append(1) or original(self, *args, **kwargs))
    source = "import math\nimport numpy as np\nimport torch\n\n\ndef f(x):\n    return torch.relu(x)\n"
    removals = [("math", None, None), ("numpy", None, "np"), ("scipy", None, None)]
    module = cst.parse_module(source)
    done = remove_imports(module, module.code, removals, CodemodContext())
    assert done.code == "import torch\n\n\ndef f(x):\n    return torch.relu(x)\n"
    assert built == []
    assert done.body[-1] is module.body[-1]  # statements left alone stay the same objects


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
