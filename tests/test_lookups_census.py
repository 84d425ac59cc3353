"""The census index (analysis/census.py `FileIndex`) answers what its first build answered (issue 20).

`FileIndex` is built for every file a census looks at and for the files TFM401's whole-tree pass
reads. Its build now visits each node once with the node's kind looked up per type, carries
"inside an if/while/try/with of this function" down the walk instead of climbing the parents per
statement, and collects the imports on the way instead of a second walk. `_ScannedIndex` below
keeps the build it replaced; every table of the two (parents, owners, classes, functions with
their bindings, loads and iterables, calls, imports), in order, is compared over every fixture.
"""

from __future__ import annotations

import ast

import pytest

from helpers import FIXTURES
from tf_migrate.analysis.census import (ClassInfo, FileIndex, Function, _arguments, _bind, _load_copy, _root,
                                        _root_name, last_name, literal_string, self_attribute)
from test_lookups import SOURCES, _parses

PARSED = [p for p in SOURCES if _parses(p)]


class _ScannedIndex(FileIndex):
    """The build `FileIndex` replaced (kept to compare with)."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parents = {}
        self.classes = []
        self.functions = []
        self.owner = {}
        self.by_name = {}
        self.class_by_name = {}
        self.calls = []
        self._calls_named = None
        self._in_branch = False
        self.modules = frozenset(
            (alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names)
        module = Function(tree, None, "<module>")
        self.functions.append(module)
        self._scan(tree, module, None, "")

    def _scan(self, node, function, cls, prefix):
        for child in ast.iter_child_nodes(node):
            self.parents[child] = node
            if isinstance(child, ast.ClassDef):
                info = ClassInfo(child, prefix + child.name)
                self.classes.append(info)
                self.class_by_name.setdefault(child.name, info)
                self.owner[child] = function
                self._scan(child, function, info, info.qualname + ".")
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = Function(child, cls, prefix + child.name)
                self.functions.append(inner)
                self.by_name.setdefault(child.name, []).append(inner)
                if cls is not None and self.parents.get(child) is cls.node:
                    cls.methods[child.name] = inner.node
                self.owner[child] = function
                _bind(function, child.name, child.lineno, child)
                for arg in _arguments(child.args):
                    inner.bindings.setdefault(arg.arg, []).append((child.lineno, arg, False))
                self._scan(child, inner, cls, inner.qualname + ".")
                continue
            self.owner[child] = function
            self._record(child, function, cls)
            self._scan(child, function, cls, prefix)

    def _conditional(self, node, function):
        current = self.parents.get(node)
        while current is not None and current is not function.node:
            if isinstance(current, (ast.If, ast.While, ast.Try, ast.With, ast.AsyncWith, ast.Match)) \
                    or type(current).__name__ == "TryStar":
                return True
            current = self.parents.get(current)
        return False

    def _record(self, node, function, cls):
        if isinstance(node, (ast.stmt, ast.NamedExpr, ast.comprehension)):
            self._in_branch = self._conditional(node, function)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            function.loads.setdefault(node.id, []).append(node)
        elif isinstance(node, ast.Call):
            self.calls.append(node)
        if isinstance(node, ast.Assign):
            for target in node.targets:
                self._target(target, node.value, node.lineno, function, cls)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            value = node.value
            if isinstance(node, ast.AugAssign):
                value = ast.BinOp(left=_load_copy(node.target), op=node.op, right=node.value)
                ast.copy_location(value, node)
                self.parents[value] = node
                self.parents[value.left] = value
            self._target(node.target, value, node.lineno, function, cls)
        elif isinstance(node, ast.NamedExpr):
            self._target(node.target, node.value, node.lineno, function, cls)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self._target(node.target, node.iter, node.lineno, function, cls)
            self._iterated(node.target, node.iter, function)
        elif isinstance(node, ast.comprehension):
            self._target(node.target, node.iter, node.iter.lineno, function, cls)
            self._iterated(node.target, node.iter, function)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    self._target(item.optional_vars, item.context_expr, node.lineno, function, cls)
        elif isinstance(node, ast.Call) and cls is not None:
            name = last_name(node.func)
            if name in ("register_buffer", "register_parameter") and len(node.args) >= 2:
                key = literal_string(node.args[0])
                if key:
                    cls.attributes.setdefault(key, []).append(node.args[1])
            elif name == "setattr" and len(node.args) == 3 and isinstance(node.args[0], ast.Name) \
                    and node.args[0].id == "self" and literal_string(node.args[1]):
                cls.attributes.setdefault(literal_string(node.args[1]), []).append(node.args[2])

    def _target(self, target, value, line, function, cls, conditional=None):
        if isinstance(target, ast.Name):
            _bind(function, target.id, line, value, self._in_branch)
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) \
                and len(target.elts) == len(value.elts) \
                and not any(isinstance(e, ast.Starred) for e in (*target.elts, *value.elts)):
            for element, part in zip(target.elts, value.elts):
                self._target(element, part, line, function, cls)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._target(element.value if isinstance(element, ast.Starred) else element,
                             value, line, function, cls)
        elif isinstance(target, ast.Subscript):
            root = _root_name(target)
            if root is not None:
                _bind(function, root, line, value, conditional=True)
            elif cls is not None and self_attribute(_root(target)):
                cls.attributes.setdefault(self_attribute(_root(target)), []).append(value)
        elif isinstance(target, ast.Attribute):
            attribute = self_attribute(target) or self_attribute(_root(target))
            if cls is not None and attribute:
                cls.attributes.setdefault(attribute, []).append(value)


def tables_of(index: FileIndex) -> dict:
    """Every table of an index, with nodes named so that two builds over one tree compare equal:
    a node of the tree by its identity, a node the build made (`a += b` read as `a + b`) by its
    dump and place (a node of the tree by its place in `ast.walk` order, so that the index of another
    parse of the same text compares equal); functions and classes by their position in the index's lists, dicts in order."""
    in_tree = {id(n): at for at, n in enumerate(ast.walk(index.tree))}  # comparable across two parses
    made: dict[int, int] = {}  # id of a node the build made -> the order it is first met

    def key(node):
        if node is None:
            return None
        if id(node) in in_tree:
            return "tree", in_tree[id(node)]
        return "made", made.setdefault(id(node), len(made)), ast.dump(node, include_attributes=True)

    functions = {id(f): i for i, f in enumerate(index.functions)}
    classes = {id(c): i for i, c in enumerate(index.classes)}
    return {
        "parents": [(key(n), key(p)) for n, p in index.parents.items()],
        "owner": [(key(n), functions[id(f)]) for n, f in index.owner.items()],
        "classes": [(key(c.node), c.qualname, [(a, [key(v) for v in vs]) for a, vs in c.attributes.items()],
                     [(m, key(n)) for m, n in c.methods.items()]) for c in index.classes],
        "functions": [(key(f.node), classes[id(f.cls)] if f.cls is not None else None, f.qualname,
                       [(n, [(line, key(v), c) for line, v, c in bs]) for n, bs in f.bindings.items()],
                       [(n, [key(v) for v in vs]) for n, vs in f.loads.items()],
                       [(n, key(v)) for n, v in f.iterated.items()]) for f in index.functions],
        "by_name": [(n, [functions[id(f)] for f in fs]) for n, fs in index.by_name.items()],
        "class_by_name": [(n, classes[id(c)]) for n, c in index.class_by_name.items()],
        "calls": [key(c) for c in index.calls],
        "modules": index.modules,
    }


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_census_index_answers_as_the_scan_it_replaced(path):
    tree = ast.parse(path.read_text())
    assert tables_of(FileIndex(tree)) == tables_of(_ScannedIndex(tree))


def test_census_index_answers_as_the_scan_on_every_kind_of_binding():
    """Branches, loops, handlers, matches, walrus, comprehensions, augmented and annotated
    assignments, nested classes and functions, decorators, lambdas, imports anywhere."""
    text = '''
import torch as th, os.path
from torch import nn as tnn, functional
if th:
    import numpy as np
    class A(tnn.Module):
        x: int = 3
        y: int
        def __init__(self, d, *a, k=1, **kw):
            self.register_buffer("pe", th.zeros(d))
            setattr(self, "q", tnn.Linear(d, d))
            self.w[0] = d
            self.v += d
            try:
                import math as m
                u = (z := d) ** 2
            except ValueError as e:
                u = [i for i in range(d) if (j := i)]
            finally:
                pass
            with open(d) as (f, g), open(d):
                h, *t = f, g, d
            match d:
                case [a1, *rest] if (w := a1):
                    u **= w
        @staticmethod
        def build(n, f=lambda v, *w: v + 1):
            while n:
                for i, (s, c) in zip(range(n), f(n)):
                    r = s = n
                    break
                else:
                    continue
            async def inner():
                async for x in n:
                    y = x
                async with n as m2:
                    pass
            return n
        class B:
            def m(self): return self.m
else:
    def free(x): return x.sin()
lst[0], obj.attr = 1, 2
'''
    tree = ast.parse(text)
    assert tables_of(FileIndex(tree)) == tables_of(_ScannedIndex(tree))


# --- rules/rope/tree.py: another file's walker, and factories read once per file ---------------------

def _described(tables) -> list:
    return [(t.start, t.end, t.two_d, t.condition, [(a.lineno, a.col_offset) for a in t.additions],
             [f.qualname for f in t.exports]) for t in tables]


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_another_files_walker_shares_the_summary_tree_and_finds_the_same_tables(path):
    """`tree._walker` builds its index on the tree the project summary parsed, not a second parse."""
    from tf_migrate.analysis.census import Walker
    from tf_migrate.analysis.project import ProjectIndex
    from tf_migrate.rules.rope import tree
    from tf_migrate.rules.rope.census import tables

    project = ProjectIndex.for_files([path])
    key = str(path.resolve())
    walk = tree._walker(project, key)
    assert walk.index.tree is project.summary(key).tree
    fresh = Walker(FileIndex(ast.parse(path.read_text())))
    assert _described(tables(walk)) == _described(tables(fresh))


def _project_files(tmp_path):
    import test_rope_tree
    from project_support import write_project

    projects = [sorted(folder.rglob("*.py")) for folder in sorted((FIXTURES / "projects").iterdir()) if folder.is_dir()]
    written = write_project(tmp_path, {"pkg/__init__.py": "", "pkg/tables.py": test_rope_tree.TABLES,
                                       "pkg/model.py": test_rope_tree.MODEL, "pkg/attention.py": test_rope_tree.ATTENTION,
                                       "pkg/grids.py": test_rope_tree.GRIDS, "train.py": test_rope_tree.SCRIPT})
    return projects + [sorted(written.files)]


def test_factory_answers_remembered_per_file_answer_as_each_call_alone(tmp_path):
    """`_imported` reads a factory function's body once per file: every call's answer is the one
    `_source_of` gives with nothing remembered."""
    from tf_migrate.analysis.census import dotted
    from tf_migrate.analysis.project import ProjectIndex
    from tf_migrate.rules.rope import tree

    factories_found = 0
    for files in _project_files(tmp_path):
        project = ProjectIndex.for_files(files)
        for path in sorted(project.files):
            walk = tree._walker(project, path)
            if walk is None:
                continue
            remembered: dict = {}
            for call in walk.index.calls:
                name = dotted(call.func)
                if not name or name.split(".")[0] == "self":
                    continue
                for symbol in project.resolve_dotted(path, name):
                    if symbol.kind not in ("function", "class") or symbol.path is None:
                        continue
                    answer = tree._source_of(project, path, symbol, remembered)
                    assert answer == tree._source_of(project, path, symbol, {})
                    factories_found += bool(answer[1])
    assert factories_found  # the learned-or-sinusoidal factory of test_rope_tree's project


# --- analysis/census.py `file_index`: the engine's parse of the file, shared ---------------------------

def _censuses(ctx) -> list:
    from tf_migrate.engine.registry import select_rules

    return [component for rule in select_rules(["all"]) for component in rule().census(ctx)]


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_census_index_on_the_engines_tree_answers_as_its_own_parse(path):
    """`file_index` builds on the tree the project already holds for the same text (the engine's parse
    of the file it migrates) instead of parsing again: same index, same census components."""
    import libcst as cst

    from tf_migrate.analysis.census import file_index
    from tf_migrate.analysis.project import ProjectIndex
    from tf_migrate.engine.context import FileContext

    text = path.read_text()
    shared, alone, own = (ProjectIndex.for_files([path]) for _ in range(3))
    tree = ast.parse(text)
    shared.add(path, text, tree)  # as migrate_source does
    alone.add(path, text)  # a rewritten text, no tree held: the census parses it for the summary too
    on_tree = FileContext(cst.parse_module(text), str(path), text, shared, str(path))
    parsed = FileContext(cst.parse_module(text), str(path), text, alone, str(path))
    assert file_index(on_tree).tree is tree
    assert file_index(parsed).tree is alone.summary(path).tree
    assert tables_of(file_index(on_tree)) == tables_of(file_index(parsed))
    assert _censuses(on_tree) == _censuses(parsed)
    own.add(path, text)
    own.summary(path)  # the summary parsed before the census: parsed once, shared the same way
    asked_after = FileContext(cst.parse_module(text), str(path), text, own, str(path))
    assert file_index(asked_after).tree is own.summary(path).tree
    assert _censuses(asked_after) == _censuses(parsed)
    # the answers of an index on a parse of its own, as before the parse was shared
    separate = FileContext(cst.parse_module(text), str(path), text, ProjectIndex.for_files([path]), str(path))
    separate._memo["census.index"] = FileIndex(ast.parse(text))
    assert _censuses(separate) == _censuses(parsed)


def test_a_held_tree_of_another_text_is_not_shared(tmp_path):
    from tf_migrate.analysis.project import ProjectIndex

    path = tmp_path / "m.py"
    path.write_text("x = 1\n")
    project = ProjectIndex.for_files([path])
    tree = ast.parse("x = 1\n")
    project.add(path, "x = 1\n", tree)
    assert project.parsed(path, "x = 1\n") is tree
    assert project.parsed(path, "x = 2\n") is None
    project.add(path, "x = 2\n")  # a rewritten text without its tree
    assert project.parsed(path, "x = 2\n") is None
    assert project.shared_tree(path, "x = 3\n") is None  # not the text held: not parsed, not kept
    assert project.parsed(path, "x = 2\n") is None
    assert project.summary(path).tree is project.parsed(path, "x = 2\n")  # a question parsed it since
    project.add(path, "x = 4\n")
    shared = project.shared_tree(path, "x = 4\n")  # the census asks first: parsed once, kept
    assert shared is project.parsed(path, "x = 4\n") is project.summary(path).tree
    assert ast.dump(shared) == ast.dump(ast.parse("x = 4\n"))
    project.add(path, "x = (\n")
    assert project.shared_tree(path, "x = (\n") is None and project.summary(path) is None


# --- rules/sdpa: a method's SDPA path is looked for only in a file that spells SDPA's name -------------

@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_call_resolving_to_sdpa_is_in_a_text_spelling_its_name(path):
    """TFM101 resolves a method's calls (is there an SDPA path already?) only when the text holds
    `scaled_dot_product_attention`, and an attribute call only when it ends so: no other call
    resolves to SDPA."""
    import libcst as cst

    from tf_migrate.analysis.attention import SDPA
    from tf_migrate.analysis.nodes import find_types
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.names import may_call

    last = SDPA.rsplit(".", 1)[-1]
    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    for call in find_types(ctx.module, cst.Call):
        if ctx.names.callee(call) == SDPA:
            assert last in text and may_call(ctx, SDPA)
            assert not isinstance(call.func, cst.Attribute) or call.func.attr.value == last


def test_a_text_without_sdpas_name_resolves_no_call_to_it():
    import libcst as cst

    from tf_migrate.analysis.attention import SDPA
    from tf_migrate.analysis.nodes import find_types
    from tf_migrate.engine.context import FileContext

    spelled = ("import torch.nn.functional as F\nfrom torch.nn.functional import scaled_dot_product_attention as a\n"
               "def f(q, k, v):\n    return F.scaled_dot_product_attention(q, k, v), a(q, k, v)\n")
    for text, expected in ((spelled, 2), (spelled.replace("scaled_dot_product_attention", "softmax"), 0)):
        ctx = FileContext(cst.parse_module(text), "m.py", text)
        assert sum(ctx.names.callee(c) == SDPA for c in find_types(ctx.module, cst.Call)) == expected


# --- rules/rope/tree.py: additions from the parent map, in walk order ----------------------------------

@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_addition_candidates_in_walk_rank_answer_as_the_walk(path):
    """`_argument_additions` reads the additions from the census index's parent map and gives its
    answers in `ast.walk` order: the same nodes, in the same order, as the walk over every node."""
    from tf_migrate.analysis.census import Walker
    from tf_migrate.rules.rope import tree
    from tf_migrate.rules.rope.census import is_addition

    text = path.read_text() + "\nx += 1\ny[0] += z + 1\n"  # an augmented addition, whose `a + b` the index makes
    walk = Walker(FileIndex(ast.parse(text)))
    walked = [n for n in ast.walk(walk.index.tree) if is_addition(walk, n)]
    ranked = sorted((n for n in tree._addition_candidates(walk) if is_addition(walk, n)),
                    key=lambda n: tree._walk_rank(walk.index.parents, n))
    assert [id(n) for n in ranked] == [id(n) for n in walked]


# --- analysis/attention.py: products are resolved only where the spelling can name one ----------------

@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_products_of_attribute_calls_are_spelled_by_their_last_name(path):
    """`_product_operands` leaves `a.b.f(...)` unresolved unless `f` is a product's name: every
    call of a fixture that resolves to matmul, bmm, baddbmm or einsum is a plain name or ends so."""
    import libcst as cst

    from tf_migrate.analysis.attention import _PRODUCT_NAMES
    from tf_migrate.analysis.nodes import find_types
    from tf_migrate.engine.context import FileContext

    text = path.read_text()
    ctx = FileContext(cst.parse_module(text), str(path), text)
    for call in find_types(ctx.module, cst.Call):
        callee = ctx.names.callee(call)
        if callee in ("torch.matmul", "torch.bmm", "torch.baddbmm", "torch.einsum"):
            assert not isinstance(call.func, cst.Attribute) or call.func.attr.value in _PRODUCT_NAMES


# --- analysis/walked.py: `ast.walk`'s order from one list; census reads of `self.X` per class ----------

@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_walked_lists_every_subtree_as_ast_walk(path):
    """`walked` gives the nodes `ast.walk` yields, the same objects in the same order, for the module
    and for every subtree in it (the census, contracts and rules' censuses read whole modules,
    classes, functions and single expressions with it)."""
    from tf_migrate.analysis.walked import walked

    tree = ast.parse(path.read_text())
    index = FileIndex(tree)
    synthetic = [v for cls in index.classes for values in cls.attributes.values() for v in values
                 if v not in index.parents or isinstance(index.parents[v], ast.AugAssign)]
    for node in [*ast.walk(tree), *synthetic]:
        got, expected = walked(node), list(ast.walk(node))
        assert len(got) == len(expected) and all(a is b for a, b in zip(got, expected))


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_attribute_reads_from_one_table_per_class_answer_as_the_walk_per_question(path):
    """`Walker.attribute_reads` files a class's `self.X` reads by X in one walk; each answer is the
    walk of the class per question it replaced, in order, also when asked twice."""
    from tf_migrate.analysis.census import Walker

    walk = Walker(FileIndex(ast.parse(path.read_text())))
    for cls in walk.index.classes:
        names = {n.attr for n in ast.walk(cls.node) if isinstance(n, ast.Attribute)} | set(cls.attributes) | {"absent"}
        for attribute in sorted(names) * 2:
            expected = [n for n in ast.walk(cls.node) if self_attribute(n) == attribute and isinstance(n.ctx, ast.Load)]
            got = walk.attribute_reads(cls, attribute)
            assert len(got) == len(expected) and all(a is b for a, b in zip(got, expected)), (cls.qualname, attribute)
            got.append(None)  # a caller's list of its own: the table is not changed


# --- analysis/project/index.py: `resolve_name` answered once per file version ----------------------------

class _Forgetful(dict):
    """A `_resolved` table that keeps nothing: every question is resolved again, as before the table."""

    def __setitem__(self, key, value) -> None:
        pass


def _resolution_sets(tmp_path):
    import test_rope_tree
    from project_support import write_project

    projects = [sorted(folder.rglob("*.py")) for folder in sorted((FIXTURES / "projects").iterdir()) if folder.is_dir()]
    written = write_project(tmp_path, {"pkg/__init__.py": "from .model import *\n", "pkg/tables.py": test_rope_tree.TABLES,
                                       "pkg/model.py": test_rope_tree.MODEL, "pkg/attention.py": test_rope_tree.ATTENTION,
                                       "pkg/grids.py": test_rope_tree.GRIDS, "train.py": test_rope_tree.SCRIPT})
    return projects + [sorted(written.files)] + [[p] for p in PARSED if "projects" not in p.parts]


def _answer(symbols) -> list:
    return [(s, type(s.node).__name__, getattr(s.node, "lineno", None), getattr(s.node, "col_offset", None))
            for s in symbols]


def _resolved_again(project, question):
    """`question()` on `project` with nothing remembered (outside `analysing`: no reads recorded)."""
    saved, project._resolved = project._resolved, _Forgetful()
    try:
        return question()
    finally:
        project._resolved = saved


def test_remembered_resolutions_answer_and_record_reads_as_resolving_again(tmp_path):
    """Each dotted name a file spells, resolved by an index that remembers answers and by one that
    resolves every time, while each file is analysed in turn: the same symbols (the same nodes) and
    the same files recorded as read, also for an answer given from the table to a later file."""
    from tf_migrate.analysis.nn_bases import dotted_text
    from tf_migrate.analysis.project import ProjectIndex

    remembered = 0
    for files in _resolution_sets(tmp_path):
        kept, again = ProjectIndex.for_files(files), ProjectIndex.for_files(files)
        again._resolved = _Forgetful()
        for path in sorted(kept.files):
            summary = kept.summary(path)
            if summary is None:
                continue
            spelled = sorted({text for node in ast.walk(summary.tree) if isinstance(node, (ast.Name, ast.Attribute))
                              and (text := dotted_text(node))} | set(summary.bindings))
            with kept.analysing(path), again.analysing(path):
                for text in spelled * 2:
                    got = kept.resolve_dotted(path, text)
                    assert _answer(got) == _answer(again.resolve_dotted(path, text)), text
                    first = text.split(".")[0]
                    assert _answer(kept.resolve_name(path, first)) == _answer(again.resolve_name(path, first))
                    assert kept.reads == again.reads, (path, text)
            for text in spelled:
                expected = _resolved_again(kept, lambda: kept.resolve_dotted(path, text))
                assert [(s, id(s.node)) for s in kept.resolve_dotted(path, text)] == \
                    [(s, id(s.node)) for s in expected], text  # the same nodes of the same trees
        remembered += len(kept._resolved)
        assert not again._resolved
    assert remembered > 100


def test_remembered_resolutions_follow_a_changed_text(tmp_path):
    from project_support import write_project

    project = write_project(tmp_path, {"pkg/__init__.py": "", "pkg/layers.py": "class Norm:\n    pass\n",
                                       "pkg/model.py": "from pkg.layers import Norm\n"})
    model, layers = str(tmp_path / "pkg" / "model.py"), str(tmp_path / "pkg" / "layers.py")
    with project.analysing(model):
        (first,) = project.resolve_name(model, "Norm")
        assert first.kind == "class" and project.resolve_name(model, "Norm") == [first]
        assert project.reads == {layers}
    with project.analysing(str(tmp_path / "other.py")):
        project.resolve_name(model, "Norm")  # from the table: the files it read are read here too
        assert project.reads == {model, layers}
    project.add(layers, "from torch.nn import LayerNorm as Norm\n")
    with project.analysing(model):
        assert [s.qualified for s in project.resolve_name(model, "Norm")] == ["torch.nn.LayerNorm"]
    project.add(layers, "class Norm:\n    pass\n", ast.parse("class Norm:\n    pass\n"))
    with project.analysing(model):
        (again,) = project.resolve_name(model, "Norm")
        assert again == first and again.node is not first.node  # the new tree's class


def test_remembered_addmm_forward_answers_answer_as_the_walk():
    """`linear._addmm_forward` keeps its answer per function: asked again (any function of any
    fixture), the walk of the function it replaced answers the same."""
    from tf_migrate.analysis import linear

    asked = yes = 0
    for path in PARSED:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for _ in range(2):
                    assert linear._addmm_forward(node) == linear._only_addmm(node)
                asked += 1
                yes += linear._addmm_forward(node)
    assert asked > 1000 and yes  # GPT-2's Conv1D forward is one


def test_remembered_canonical_spellings_answer_as_the_look_up():
    from tf_migrate.analysis import names
    from tf_migrate.analysis.project.index import canonical

    def looked_up(qualified: str) -> str:  # what `canonical` computed per question
        qualified = names.canonical(qualified)
        return "torch.nn." + qualified.rsplit(".", 1)[-1] if qualified.startswith("torch.nn.modules.") else qualified

    spellings = [*names._ALIASES, *names._ALIASES.values(), "torch.nn.modules.linear.Linear",
                 "torch.nn.modules.activation.Softmax", "torch.nn.Linear", "math.sqrt", "pkg.layers.Norm", ""]
    for qualified in spellings * 2:
        assert canonical(qualified) == looked_up(qualified), qualified
