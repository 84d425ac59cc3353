"""Look-ups and caches that replace whole-file scans answer what the scans answered.

Each faster path (issue 20) is compared here with the plain computation it replaced, over the
fixtures: a cache or index that answered differently would change reports or rewrites silently.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import sys

import libcst as cst
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import FIXTURES, MODEL_SOURCES, MODELS, ROOT
from tf_migrate.analysis import census, dataflow, ffn, nodes
from tf_migrate.analysis.index import NodeIndex
from tf_migrate.analysis.nodes import _walk
from tf_migrate.analysis.symbols import symbols_of
from tf_migrate.engine.context import FileContext
from tf_migrate.engine.lines import _LineMatcher, original_lines
from tf_migrate.engine.source import split_lines

SOURCES = sorted(FIXTURES.rglob("*.py"))


def _parses(path) -> bool:
    try:
        ast.parse(path.read_text())
        return True
    except SyntaxError:
        return False


# --- engine/lines.py: the line map's matcher -------------------------------------------------------

def _opcodes(matcher, a, b):
    return matcher(None, a, b, autojunk=False).get_opcodes()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=60), st.lists(st.integers(0, 3), max_size=60), st.sampled_from([1, 2, 4]))
def test_line_matcher_answers_as_difflib_on_repetitive_sequences(a, b, shortest):
    saved = _LineMatcher._SMALL, _LineMatcher._SHORTEST
    _LineMatcher._SMALL, _LineMatcher._SHORTEST = 0, shortest  # every question through the runs
    try:
        assert _opcodes(_LineMatcher, a, b) == _opcodes(difflib.SequenceMatcher, a, b)
    finally:
        _LineMatcher._SMALL, _LineMatcher._SHORTEST = saved


def test_line_matcher_answers_as_difflib_on_a_rewritten_file_of_many_copies():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from growth import n_copies

    from tf_migrate.engine.file import migrate_source
    from tf_migrate.engine.registry import all_rules

    text = n_copies((MODELS / "einsum_gpt.py").read_text(), 6)
    result = migrate_source(text, "copies.py", [rule() for rule in all_rules()])
    old, new = split_lines(text), split_lines(result.migrated)
    assert len(old) > 2 * _LineMatcher._SMALL and old != new  # the runs answer the large ranges
    assert _opcodes(_LineMatcher, old, new) == _opcodes(difflib.SequenceMatcher, old, new)
    assert _opcodes(_LineMatcher, new, old) == _opcodes(difflib.SequenceMatcher, new, old)
    line_of = original_lines(text, result.migrated)
    assert [line_of(n) for n in range(1, len(new) + 1)] == [
        next(i1 + (n - 1 - j1) + 1 if tag == "equal" else min(i1 + 1, len(old))
             for tag, i1, _, j1, j2 in _opcodes(difflib.SequenceMatcher, old, new) if j1 <= n - 1 < j2)
        for n in range(1, len(new) + 1)]


# --- analysis/nodes.py: type searches and per-node facts ------------------------------------------

KINDS = [cst.Call, cst.FunctionDef, cst.SimpleStatementLine, (cst.Call, cst.BinaryOperation), cst.Assign]


@pytest.mark.parametrize("path", MODEL_SOURCES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_type_search_answers_as_a_walk(path):
    text = path.read_text()
    indexed = cst.parse_module(text)
    NodeIndex(indexed)  # remembered: `find_types` answers from it
    plain = cst.parse_module(text)  # in no index: `find_types` walks
    for module in (indexed, plain):
        scopes = [module] + [n for n in _walk(module, True) if isinstance(n, (cst.ClassDef, cst.FunctionDef))]
        for within in scopes:
            for kinds in KINDS:
                expected = [n for n in _walk(within, True) if isinstance(n, kinds)]
                assert nodes.find_types(within, kinds) == expected


@pytest.mark.parametrize("path", MODEL_SOURCES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_remembered_binds_answer_as_a_visit(path):
    module = cst.parse_module(path.read_text())
    NodeIndex(module)
    statements = [n for n in _walk(module, True) if isinstance(n, (cst.BaseStatement, cst.IndentedBlock))]
    for statement in statements:
        for name in {n.value for n in _walk(statement, True) if isinstance(n, cst.Name)} | {"absent_name"}:
            visitor = dataflow._Binds(name)
            nodes.visit(statement, visitor)
            assert dataflow.binds(statement, name) is visitor.found, (path.name, name)


# --- analysis/dataflow.py: the names an expression or statement reads --------------------------------

class _Loads(cst.CSTVisitor):
    """The visitor `dataflow.loads` ran before it read the fields itself. Collects the `Name` nodes that read `name` (not targets, attributes or keywords).

    With `name=None`, every read name.
    """

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.found: list[cst.Name] = []

    def visit_Name(self, node: cst.Name) -> None:
        if self.name is None or node.value == self.name:
            self.found.append(node)

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        node.value.visit(self)
        return False

    def visit_AssignTarget(self, node: cst.AssignTarget) -> bool:
        _visit_target(node.target, self)
        return False

    def visit_AnnAssign(self, node: cst.AnnAssign) -> bool:
        _visit_target(node.target, self)
        node.annotation.visit(self)
        if node.value is not None:
            node.value.visit(self)
        return False

    def visit_For(self, node: cst.For) -> bool:
        _visit_target(node.target, self)
        for child in (node.iter, node.body, node.orelse):
            if child is not None:
                child.visit(self)
        return False

    def visit_CompFor(self, node: cst.CompFor) -> bool:
        _visit_target(node.target, self)
        node.iter.visit(self)
        for condition in node.ifs:
            condition.visit(self)
        if node.inner_for_in is not None:
            node.inner_for_in.visit(self)
        return False

    def visit_AsName(self, node: cst.AsName) -> bool:
        return False

    def visit_Param(self, node: cst.Param) -> bool:
        if node.default is not None:
            node.default.visit(self)
        return False

    def visit_NamedExpr(self, node: cst.NamedExpr) -> bool:
        node.value.visit(self)
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        node.params.visit(self)
        node.body.visit(self)
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        node.body.visit(self)
        return False

    def visit_Import(self, node: cst.Import) -> bool:
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        return False

    def visit_Global(self, node: cst.Global) -> bool:
        return False

    def visit_Nonlocal(self, node: cst.Nonlocal) -> bool:
        return False


def _visit_target(target: cst.BaseExpression, visitor: _Loads) -> None:
    """Targets bind plain names; subscripts and attributes in them read their base."""
    if isinstance(target, (cst.Tuple, cst.List)):
        for element in target.elements:
            _visit_target(element.value, visitor)
    elif isinstance(target, cst.StarredElement):
        _visit_target(target.value, visitor)
    elif not isinstance(target, cst.Name):
        target.visit(visitor)


def _visitor_loads(node, name):
    visitor = _Loads(name)
    nodes.visit(node, visitor)
    return visitor.found


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_loads_answer_as_the_visitor(path):
    module = cst.parse_module(path.read_text())
    # each statement reaches every node type below it; the types read part by part also as the root
    roots = (cst.Module, cst.BaseStatement, cst.BaseSmallStatement, *dataflow._LOAD_PARTS)
    for node in _walk(module, True):
        if not isinstance(node, roots):
            continue
        assert dataflow.loads(node, None) == _visitor_loads(node, None), (path.name, type(node).__name__)
        if isinstance(node, (cst.BaseStatement, cst.BaseSmallStatement)):
            read = sorted({n.value for n in dataflow.loads(node, None)})
            for name in [*read[:1], *read[-1:], "absent_name"]:  # a name only filters what is read
                assert dataflow.loads(node, name) == _visitor_loads(node, name), (path.name, name)


# --- analysis/scopes.py: a scope's bindings from the index's source-order list ---------------------

@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_scope_bindings_from_the_index_answer_as_the_walk(path):
    from tf_migrate.analysis import scopes

    _check_scope_bindings(path.read_text())


def test_scope_bindings_from_the_index_answer_as_the_walk_in_corner_cases():
    from test_scopes import CORNERS

    _check_scope_bindings(CORNERS + """
def walrus(xs, f=lambda: (hidden := 1)):
    ys = {k: (seen := v) for k, v in xs if (kept := k)}
    zs = [lambda: (deep := y) for y in xs for z in (w := ys)]
    g = (q for q in xs if [(inner := q) for _ in q])
    @decorate(named := 2)
    def nested(a=(default := 3)):
        local = 1
    class Local(Base, meta=(kw := 4)):
        attr = 5
    return ys, zs, g
""")


def _check_scope_bindings(text):
    from tf_migrate.analysis import scopes

    module = cst.parse_module(text)
    index = NodeIndex(module)
    kinds = (cst.Module, cst.FunctionDef, cst.ClassDef, cst.Lambda, *scopes._COMPREHENSIONS)
    for scope in _walk(module, True):
        if isinstance(scope, kinds):
            assert scope in index and scopes._collect(scope) == scopes._collect_walk(scope), type(scope).__name__


# --- analysis/modules.py: the simple statements of `__init__` ---------------------------------------

class _SimpleStatements(cst.CSTVisitor):
    """The visitor `modules._init_statements` ran before it sliced the index: simple statements of
    a body, nested blocks included, nested defs and classes not."""

    def __init__(self) -> None:
        self.found: list[cst.SimpleStatementLine] = []

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        self.found.append(node)
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_init_statements_answer_as_the_visitor(path):
    from tf_migrate.analysis import modules

    for module in (cst.parse_module(path.read_text()), None):
        if module is None:  # a tree no remembered index holds: answered by a walk
            module = cst.parse_module(path.read_text())
        else:
            NodeIndex(module)
        for function in _walk(module, True):
            if isinstance(function, cst.FunctionDef):
                collector = _SimpleStatements()
                nodes.visit(function.body, collector)
                assert modules._init_statements(function) == collector.found


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_bound_names_from_the_index_answer_as_the_visitor(path):
    _check_bound_names(path.read_text())


def test_bound_names_from_the_index_answer_as_the_visitor_in_corner_cases():
    from test_scopes import CORNERS

    _check_bound_names(CORNERS + """
def binder(xs, mask):
    del xs[0], gone
    scores.masked_fill_(mask, 0)
    total: int = 0
    total += 1
    for i, (j, *rest) in xs:
        with open(i) as handle, open(j) as (a, b):
            pass
    try:
        pass
    except ValueError as error:
        pass
    f = lambda inner=(w := 1): (lam := inner)
    g = [(comp := x) for x in xs]
    class Local:
        hidden = 1
    def nested():
        deeper = 2
    return (walrus := f)
""")


def _check_bound_names(text):
    module = cst.parse_module(text)
    index = NodeIndex(module)
    for node in _walk(module, True):
        if isinstance(node, (cst.BaseStatement, cst.BaseSmallStatement, cst.IndentedBlock, cst.Module)):
            visitor = dataflow._Binds("")
            nodes.visit(node, visitor)
            assert dataflow._bound_names_indexed(node, index) == frozenset(visitor.bound), type(node).__name__


# --- analysis/census.py: callers and arguments by look-up -------------------------------------------

def _every_caller(walker, function):
    """The scan `Walker._callers` replaced: every call of the file, tested one by one."""
    name = function.node.name
    cls = function.cls if walker.is_method(function) else None
    for call in walker.index.calls:
        if cls is None:
            if isinstance(call.func, ast.Name) and call.func.id == name:
                yield call
            continue
        attribute = census.self_attribute(call.func)
        if attribute is None:
            continue
        caller = walker.index.function_of(call)
        if attribute == name and caller.cls is cls:
            yield call
        elif name == "forward" and caller.cls is not None \
                and caller.cls.constructor(attribute).rsplit(".", 1)[-1] == cls.node.name:
            yield call


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_callers_and_parameter_owners_answer_as_scans(path):
    walker = census.Walker(census.FileIndex(ast.parse(path.read_text())))
    for function in walker.index.functions:
        if not isinstance(function.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        assert list(walker._callers(function)) == list(_every_caller(walker, function))
        for parameter in census._arguments(function.node.args):
            owner = next(f for f in walker.index.functions if isinstance(f.node, (ast.FunctionDef, ast.AsyncFunctionDef))
                         and parameter in census._arguments(f.node.args))
            assert walker._call_tables()[0][id(parameter)] is owner


def test_prenorm_stack_lines_answer_as_the_scan_of_every_class():
    from tf_migrate.rules.prenorm import census as prenorm

    checked = 0
    for path in (p for p in SOURCES if _parses(p)):
        index = census.FileIndex(ast.parse(path.read_text()))
        for block in index.classes:
            holders = {block.node.name} | {c.node.name for c in index.classes if prenorm._builds(c, {block.node.name})}
            lines = [line for cls in index.classes for attribute in cls.attributes
                     if prenorm._built_names(index, cls, attribute) & holders
                     for line in prenorm._loops_over(cls, attribute)]
            assert prenorm._stack_lines(index, block) == tuple(sorted(set(lines))), (path.name, block.qualname)
            checked += bool(lines)
    assert checked  # some fixture runs a stack of blocks


# --- analysis/ffn.py: block questions answered once per class -------------------------------------

def _built_beside_project_attention(ctx, name):
    """The search of every function per class that `ffn._functions_calling` replaced."""
    for function in [n for n in _walk(ctx.module, True) if isinstance(n, cst.FunctionDef)]:
        if any(isinstance(c, cst.Call) and isinstance(c.func, cst.Name) and c.func.value == name
               for c in _walk(function, True)) and ffn._find_project_attention(ctx, function):
            return True
    return False


@pytest.mark.parametrize("path", MODEL_SOURCES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_block_questions_answer_as_the_searches_they_replaced(path):
    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    attention = ffn.attention_classes(ctx)
    for cls in ctx.module_classes:
        name = cls.node.name.value
        assert ffn._built_beside_project_attention(ctx, name) == _built_beside_project_attention(ctx, name)
        assert ffn.in_block(ctx, cls, attention) == ffn._in_block(ctx, cls, attention)
        assert ffn.in_block(ctx, cls, attention) == ffn._in_block(ctx, cls, attention)  # answered from the memo


# --- analysis/nodes.py, scopes.py, index.py: what a fix leaves unchanged is carried across it --------

def _index_tables(index):
    return (index.parents, len(index.parents), list(index._position.items()), index._nodes, index._parent, index._scope, index._by_type,
            index._names, index._attributes, index._calls, index._end, index.shared)


def _migrated_checking_carried(path, monkeypatch) -> dict[str, int]:
    """Runs every rule over `path`, comparing each remembered fact (`nodes.cached`: a scope's
    bindings, a statement's bound names) with a fresh computation and each index built from an
    earlier version's with the plain walk of the same module. Returns how many facts came from an
    earlier version (the newest index did not hold them yet) and how many index blocks were copied."""
    from tf_migrate.analysis import scopes
    from tf_migrate.engine import context
    from tf_migrate.engine.file import migrate_source
    from tf_migrate.engine.registry import all_rules

    counts = {"facts": 0, "blocks": 0}
    real_cached, real_copy = nodes.cached, NodeIndex._copy

    def checked(node, kind, compute):
        holding = [index for index in nodes._INDEXES if node in index]
        earlier = [index.facts[kind][id(node)] for index in holding[1:]
                   if id(node) in index.facts.get(kind, {})] if holding and id(node) not in \
            holding[0].facts.get(kind, {}) else []
        answer = real_cached(node, kind, compute)
        counts["facts"] += any(answer is known for known in earlier)
        assert answer == compute(node), (path.name, kind, type(node).__name__)
        return answer

    def counted(self, *args):
        counts["blocks"] += 1
        return real_copy(self, *args)

    class Checked(NodeIndex):
        def __init__(self, root, earlier=None):
            super().__init__(root, earlier)
            if earlier is not None:
                assert _index_tables(self) == _index_tables(NodeIndex(root)), path.name

    monkeypatch.setattr(scopes, "cached", checked)
    monkeypatch.setattr(dataflow, "cached", checked)
    monkeypatch.setattr(NodeIndex, "_copy", counted)
    monkeypatch.setattr(context, "NodeIndex", Checked)
    result = migrate_source(path.read_text(), str(path), [rule() for rule in all_rules()])
    assert not [e for e in result.errors if "internal error" in e]
    return counts


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_facts_and_index_carried_across_fixes_answer_as_fresh_computations(path, monkeypatch):
    _migrated_checking_carried(path, monkeypatch)


def _copies_file(tmp_path, count: int):
    """The N-copies einsum GPT file (benchmarks/growth.py) written to `tmp_path`."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from growth import n_copies

    path = tmp_path / "copies.py"
    path.write_text(n_copies((MODELS / "einsum_gpt.py").read_text(), count))
    return path


def test_unchanged_scopes_and_subtrees_are_carried_across_fixes(tmp_path, monkeypatch):
    counts = _migrated_checking_carried(_copies_file(tmp_path, 3), monkeypatch)
    assert counts["facts"] > 0 and counts["blocks"] > 0


def test_index_of_a_version_that_reuses_a_subtree_twice_answers_as_a_walk():
    module = cst.parse_module((MODELS / "einsum_gpt.py").read_text())
    earlier = NodeIndex(module)
    big = max(module.body, key=lambda statement: len(earlier.below(statement)))
    twice = module.with_changes(body=[*module.body, big])  # one object in two places, as a fix may leave it
    index = NodeIndex(twice, earlier)
    assert index.shared and _index_tables(index) == _index_tables(NodeIndex(twice))


@pytest.mark.parametrize("path", MODEL_SOURCES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_parents_read_from_positions_answer_as_the_parent_map(path):
    """`NodeIndex.parents` answers from the index's positions, not a dict built per version."""
    module = cst.parse_module(path.read_text())
    index = NodeIndex(module)
    plain = nodes.parent_map(module)
    outside = [cst.Name("x"), module.deep_clone()]  # objects the tree does not hold
    for node in [*_walk(module, True), *outside]:
        assert index.parents.get(node) is plain.get(node)
        assert index.parents.get(node, "absent") is plain.get(node, "absent")
        assert (node in index.parents) is (node in plain)
        if node in plain:
            assert index.parents[node] is plain[node]
        else:
            with pytest.raises(KeyError):
                index.parents[node]
    assert len(index.parents) == len(plain) and list(index.parents) == list(_walk(module, True))[1:]


# --- analysis/names.py: what a name stands for, remembered per node ---------------------------------

@pytest.mark.parametrize("path", MODEL_SOURCES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_remembered_imported_names_answer_as_resolution(path):
    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    names = ctx.names
    asked = [n for n in _walk(ctx.module, True) if isinstance(n, (cst.Name, cst.Attribute))]
    for _ in range(2):  # the second round answers from the memo
        for node in asked:
            assert names.imported(node) == names._imported_name(node)
            assert names.module_level(node) == names._module_level_binding(node)


def test_remembered_imported_names_are_not_confused_by_passing_nodes():
    """Nodes built for one question and dropped: their ids come back for other objects."""
    text = "import torch\nimport torch.nn.functional as F\n"
    names = FileContext(cst.parse_module(text), "t.py", text).names
    spellings = ["torch.softmax", "F.relu", "unknown.thing", "torch.nn.Linear", "F", "print"] * 50
    expected = {s: names._imported_name(cst.parse_expression(s)) for s in set(spellings)}
    assert [names.imported(cst.parse_expression(s)) for s in spellings] == [expected[s] for s in spellings]


def _find_project_attention(ctx, init):
    """The search `ffn._owner_context` shortened: every class the function builds is asked of the
    project's own context of its file (the analysed file parsed a second time), not of `ctx`."""
    for call in [n for n in _walk(init, True) if isinstance(n, cst.Call) and isinstance(n.func, cst.Name)]:
        for symbol in symbols_of(ctx, call.func):
            owner = ctx.project.context(symbol.path) if symbol.kind == "class" and symbol.path else None
            if owner is not None and owner is not ctx and symbol.qualname in ffn._direct_attention(owner):
                return True
    return False


def _assert_project_attention_as_the_search(ctx):
    for function in [n for n in _walk(ctx.module, True) if isinstance(n, cst.FunctionDef)]:
        assert ffn._find_project_attention(ctx, function) == _find_project_attention(ctx, function), \
            (ctx.path, ctx.line(function))


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_own_file_classes_answer_as_the_projects_second_parse(path):
    text = path.read_text()
    _assert_project_attention_as_the_search(FileContext(cst.parse_module(text), str(path), text))


@pytest.mark.parametrize("path", [p for p in MODEL_SOURCES if "Linear" in p.read_text() and "class " in p.read_text()],
                         ids=lambda p: str(p.relative_to(FIXTURES)))
def test_own_file_classes_answer_as_the_projects_second_parse_after_earlier_rules(path, monkeypatch):
    """After earlier rules' fixes the analysed module is the fixed tree, not a parse of its text."""
    from tf_migrate.engine.file import migrate_source
    from tf_migrate.engine.registry import all_rules
    from tf_migrate.rules.swiglu import FeedForwardToSwiGLU

    asked = []
    check = FeedForwardToSwiGLU.check

    def checked(self, ctx):
        _assert_project_attention_as_the_search(ctx)
        asked.append(ctx.text)
        return check(self, ctx)

    monkeypatch.setattr(FeedForwardToSwiGLU, "check", checked)
    text = path.read_text()
    result = migrate_source(text, str(path), [rule() for rule in all_rules()])
    assert not result.errors and asked


def _chain_facts(pairs):
    return [(id(f.activation), id(f.gate_input), f.first, f.second,
             [(b.name, id(b.value), id(b.statement), id(t.reads[id(b)])) for b in t.followed]) for f, t in pairs]


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_remembered_chains_and_split_activations_answer_as_the_searches(path):
    """Each caller of `ffn._chains` gets fresh copies of what the first search found."""
    from tf_migrate.analysis.dataflow import FunctionFlow

    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    for cls in ctx.module_classes:
        for method in cls.methods.values():
            flow = FunctionFlow(ctx, method)
            first, again = list(ffn._chains(ctx, cls, flow, method)), list(ffn._chains(ctx, cls, flow, method))
            assert _chain_facts(first) == _chain_facts(again) == _chain_facts(ffn._find_chains(ctx, cls, flow, method))
            assert all(a[0] is not b[0] and a[0].first is not b[0].first and a[1] is not b[1]
                       for a, b in zip(first, again))
            assert list(ffn.split_activations(ctx, cls, method)) == list(ffn._split_activations(ctx, cls, method))
            assert list(ffn.split_activations(ctx, cls, method)) == list(ffn._split_activations(ctx, cls, method))


def test_canonical_spellings_keep_the_last_part():
    """`NameResolver.is_call` skips a dotted callee whose attribute is not the last part of a wanted name."""
    from tf_migrate.analysis.names import _ALIASES

    assert all(old.rsplit(".", 1)[-1] == new.rsplit(".", 1)[-1] for old, new in _ALIASES.items())


_WANTED = [ffn._ATTENTION_CALLS, ffn.ACTIVATION_FUNCTIONS, ffn._DROPOUT_FUNCTIONS, ("torch.matmul",),
           ("torch.nn.functional.linear",), ("torch.softmax", "torch.special.softmax", "torch.nn.Softmax"),
           ("torch.nn.functional.scaled_dot_product_attention",)]


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_callee_questions_answer_as_resolving_every_call(path):
    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    for call in [n for n in _walk(ctx.module, True) if isinstance(n, cst.Call)]:
        for names in _WANTED:
            assert ctx.names.is_call(call, *names) == (ctx.names.callee(call) in names), (ctx.line(call), names)


def _called_names_walk(ctx):
    """The whole-module walk `ffn._called_names` replaced: function -> the names its calls name."""
    found, stack = {}, [(ctx.module, ())]
    while stack:
        node, owners = stack.pop()
        if isinstance(node, cst.FunctionDef):
            found[node] = set()
            owners = owners + (found[node],)
        elif isinstance(node, cst.Call) and owners:
            called = {node.func.value} if isinstance(node.func, cst.Name) else set()
            if ctx.names.callee(node) == "torch.nn.MultiheadAttention":
                called.add(ffn._BUILDS_MHA)
            for names in owners:
                names |= called
        stack.extend((child, owners) for child in nodes.children(node))
    return found


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_called_names_answer_as_the_walk(path):
    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    walked = _called_names_walk(ctx)
    assert ffn._called_names(ctx) == [walked[f] for f in nodes.find_types(ctx.module, cst.FunctionDef)]


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_init_value_tables_answer_as_the_search_of_init(path):
    from tf_migrate.analysis.names import self_attribute
    from tf_migrate.analysis.symbols import init_values

    def searched(init, attribute):  # `init_values` as it was: a search of `__init__` per attribute
        return [node.value for node in _walk(init, True) if isinstance(node, cst.Assign)
                and any(self_attribute(t.target) == attribute for t in node.targets)]

    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    for cls in ctx.module_classes:
        init = cls.methods.get("__init__")
        assigned = {a.attr.value for a in _walk(init, True) if isinstance(a, cst.Attribute)} if init else set()
        for attribute in sorted(assigned | set(cls.submodules) | {"<none>"}):
            expected = searched(init, attribute) if init is not None else []
            assert init_values(cls, attribute) == expected, (cls.qualname, attribute)
            assert init_values(cls, attribute) == expected  # the remembered table answers the same


@pytest.mark.parametrize("path", MODEL_SOURCES + sorted((FIXTURES / "swiglu").glob("*.py")),
                         ids=lambda p: str(p.relative_to(FIXTURES)))
def test_swiglu_class_searches_answer_as_a_walk(path):
    """The type searches of TFM301's replay and layer-list questions (`find_types` inside methods
    and inside an `if`'s body) list what a walk lists, in its order."""
    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    ctx.index  # remembered: `find_types` answers from it
    for cls in ctx.module_classes:
        for method in cls.methods.values():
            within = [method] + [n.body for n in _walk(method, True) if isinstance(n, cst.If)]
            for node in within:
                for kind in (cst.Call, cst.For, cst.If, cst.Assign):
                    assert nodes.find_types(node, kind) == [n for n in _walk(node, True) if isinstance(n, kind)]


def test_every_attention_callee_is_spelled_by_an_attention_word():
    """`ffn._may_compute_attention` skips files whose text holds none of the words."""
    for callee in ffn._ATTENTION_CALLS:
        assert callee.rsplit(".", 1)[-1] in ffn._ATTENTION_WORDS


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_files_computing_attention_hold_an_attention_word(path):
    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    if ffn._direct_attention(ctx) or ffn._attention_functions(ctx):
        assert any(word in text for word in ffn._ATTENTION_WORDS)


def _naming_strings_scan(ctx, names):
    """The scan `string_refs.naming_strings` replaced: every literal evaluated per question."""
    from tf_migrate.analysis.string_refs import _literal_texts

    wanted = set(names)
    for node in ctx.index.of_type(ctx.module, (cst.SimpleString, cst.FormattedString)):
        for text in _literal_texts(node):
            hit = next((segment for segment in text.split(".") if segment in wanted), None)
            if hit is not None:
                yield node, hit
                break


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_naming_strings_answer_as_the_scan(path):
    from tf_migrate.analysis.string_refs import _literal_texts, naming_strings

    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    segments = sorted({segment for node in ctx.index.of_type(ctx.module, (cst.SimpleString, cst.FormattedString))
                       for literal in _literal_texts(node) for segment in literal.split(".")})
    attributes = sorted({n.attr.value for n in ctx.index.of_type(ctx.module, cst.Attribute)})
    for names in (segments, attributes, segments[::3], segments[1::2] + attributes[:5], ["weight"], []):
        assert list(naming_strings(ctx, names)) == list(_naming_strings_scan(ctx, names))


# --- rules/fused_qkv: replacements visit only the paths down to the swapped nodes -----------------

def _fused_qkv_replacements_checked(path, monkeypatch) -> int:
    """Runs TFM101 and TFM102 (the rule after the first fix of a file) over `path`, comparing
    each replacement made along the paths of the file's parent map with the whole visit it
    replaced. Returns how many were compared."""
    from tf_migrate.engine.file import migrate_source
    from tf_migrate.engine.registry import all_rules
    from tf_migrate.rules.fused_qkv import qkv_split

    real = qkv_split.replace_nodes
    compared = [0]

    def checked(node, swaps, parents=None):
        answer = real(node, swaps, parents)
        if parents is not None:
            whole = real(node, swaps)
            assert answer.deep_equals(whole) and cst.Module([]).code_for_node(answer) == \
                cst.Module([]).code_for_node(whole), path.name
            compared[0] += 1
        return answer

    monkeypatch.setattr(qkv_split, "replace_nodes", checked)
    rules = [rule() for rule in all_rules() if rule.code in ("TFM101", "TFM102")]
    result = migrate_source(path.read_text(), str(path), rules)
    assert not [e for e in result.errors if "internal error" in e]
    return compared[0]


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_fused_qkv_replacements_along_paths_answer_as_whole_visits(path, monkeypatch):
    _fused_qkv_replacements_checked(path, monkeypatch)


def test_fused_qkv_replacements_along_paths_are_made(tmp_path, monkeypatch):
    assert _fused_qkv_replacements_checked(_copies_file(tmp_path, 3), monkeypatch) > 0


# --- analysis/scopes.py: what a name read in a scope refers to, remembered per scope and name -------

@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_remembered_scope_lookups_answer_as_the_search(path):
    from tf_migrate.analysis.scopes import Scopes

    text = path.read_text()
    module = cst.parse_module(text)
    parents = NodeIndex(module).parents
    remembered, plain = Scopes(module, parents, text), Scopes(module, parents, text)
    plain._lookup = plain._search  # every lookup searches the scopes again
    asked = [n for n in _walk(module, True) if type(n) in (cst.Name, cst.Attribute)]
    for node in asked + asked[::-1]:
        assert remembered.resolve(node) == plain.resolve(node)
        assert remembered.binding_scope(node) is plain.binding_scope(node)


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_scopes_read_from_the_index_answer_as_the_walk_up_the_parents(path):
    from tf_migrate.analysis.scopes import Scopes, _indexed_scope

    text = path.read_text()
    module = cst.parse_module(text)
    index = NodeIndex(module)
    scopes = Scopes(module, index.parents, text)
    read = 0
    for node in _walk(module, True):
        assert scopes.scope_of(node) is scopes._walked_scope(node)
        read += _indexed_scope(index, index.position(node)) is not None
    assert read or len(index._nodes) < 50  # the index answers, not only the walk


# --- rules/prenorm: built-in layers looked for only in files that spell them ---------------------

@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_builtin_layers_of_files_spelling_none_answer_as_resolving_every_call(path):
    layers = importlib.import_module("tf_migrate.rules.prenorm.builtin_layers")

    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    for function in ctx.index.of_type(ctx.module, cst.FunctionDef):
        assert list(layers.builtin_layers(ctx, function)) == list(layers._builtin_layers(ctx, function))
        assert list(layers.builtin_transformers(ctx, function)) == list(layers._builtin_transformers(ctx, function))


# --- engine/file.py: which free-function rules a file without nn.Module classes keeps ---------------

def _function_naming_walk(tree, words) -> bool:
    """The walk of every top-level function that `_function_naming` shortens."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                name = inner.id if isinstance(inner, ast.Name) else inner.attr if isinstance(inner, ast.Attribute) else ""
                if any(word in name for word in words):
                    return True
    return False


FUNCTION_NAMING = [
    "def f(x):\n    return x.softmax(-1)\n",
    "# softmax in a comment\ndef f(x):\n    return x\n",
    "def f(x):\n    '''softmax in a docstring'''\n    return x\n",
    "@torch.softmax\ndef f(x):\n    return x\n",  # a decorator above the def line
    "def f(x):\r    return x\rdef g(x):\r    return F.softmax(x, -1)\r",  # old Mac line ends
    "def f(x):\r\n    return x\r\n\r\ndef g(y=torch.softmax):\r\n    return y\r\n",
    "def f(x):\n    return x.ｓｏｆｔｍａｘ(-1)\n",  # NFKC: the attribute is `softmax`
    "def f(x):\n    return x  # pos\ndef g(x: 'Pos'):\n    return x\nx = softmax\n",
]


@pytest.mark.parametrize("source", FUNCTION_NAMING)
def test_function_naming_answers_as_the_walk_in_corner_cases(source):
    from tf_migrate.engine.file import _function_naming

    tree = ast.parse(source)
    for words in (("softmax", "Softmax"), ("sin(", "pos", "Pos"), ("nothing",)):
        assert _function_naming(tree, words, source) == _function_naming_walk(tree, words)


@pytest.mark.parametrize("path", [p for p in SOURCES if _parses(p)], ids=lambda p: str(p.relative_to(FIXTURES)))
def test_function_naming_answers_as_the_walk(path):
    from tf_migrate.engine.file import _function_naming

    source = path.read_text()
    tree = ast.parse(source)
    for words in (("softmax", "Softmax"), ("sin(", "sin_(", "pos", "Pos", "softmax", "Softmax"), ("Linear",)):
        assert _function_naming(tree, words, source) == _function_naming_walk(tree, words)
