"""TFM101 / TFM401 look-ups answer what the walks they replaced answered (issue 20).

The rules' per-method questions (products, SDPA calls, softmax spellings, the table additions)
used to walk every node of every method; they now read type slices of the remembered index and
per-file memos (callees, the calls of a class by name, the owners of submodule calls). Each is
compared here with the plain walk or scan over every fixture that parses.
"""

from __future__ import annotations

import ast

import libcst as cst
import pytest

from helpers import FIXTURES
from tf_migrate.analysis import dataflow
from tf_migrate.analysis.nodes import _walk, body_nodes, find_types
from tf_migrate.engine.context import FileContext
from tf_migrate.rules.rope import positions, rotary
from test_lookups import SOURCES, _parses

PARSED = [p for p in SOURCES if _parses(p)]
_OWN_KINDS = [(cst.BinaryOperation, cst.Call), cst.Call, (cst.Global, cst.Nonlocal, cst.Call), cst.BinaryOperation]


def _context(path) -> FileContext:
    text = path.read_text()
    return FileContext(cst.parse_module(text), str(path), text)


def _functions(ctx) -> list[cst.FunctionDef]:
    return [n for n in _walk(ctx.module, True) if isinstance(n, cst.FunctionDef)]


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_own_body_type_slices_answer_as_the_body_walk(path):
    ctx = _context(path)
    ctx.index  # remembered: `find_types` answers from it
    for function in _functions(ctx):
        for kinds in _OWN_KINDS:
            assert find_types(function.body, kinds, into_scopes=False) == [
                n for n in body_nodes(function) if isinstance(n, kinds)]


def _plain_additions(ctx):
    """The walk `find_additions` did before: every node of each method's own body, `+` kept."""
    for cls in ctx.module_classes:
        for method in cls.methods.values():
            for node in _walk(method.body, False):
                if not (isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Add)):
                    continue
                for table_side, other in ((node.right, node.left), (node.left, node.right)):
                    table = positions._table_of(ctx, cls, method, table_side)
                    if table is not None:
                        statement = positions._statement(ctx, node)
                        if statement is not None:
                            yield cls, method, node, statement, other, table.buffer, table.statements
                        break


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_table_additions_answer_as_the_method_walk(path):
    ctx = _context(path)
    ctx.index
    found = positions.file_additions(ctx)
    assert positions.file_additions(ctx) is found  # the second question is answered from the memo
    expected = list(_plain_additions(ctx))
    assert len(found) == len(expected)
    for addition, (cls, method, node, statement, other, buffer, statements) in zip(found, expected):
        assert (addition.cls, addition.method, addition.node, addition.statement, addition.other) == (
            cls, method, node, statement, other)
        assert addition.table.buffer == buffer and addition.table.statements == statements


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_softmax_spelling_and_products_answer_as_the_printed_method(path):
    ctx = _context(path)
    ctx.index
    for function in _functions(ctx):
        code = ctx.code(function)
        printed = any(word in code for word in ("softmax", "Softmax"))
        assert rotary._mentions_softmax(ctx, function) is printed
        assert rotary._mentions_softmax(ctx, function) is printed  # from the memo
        products = any(rotary._is_product(n, ctx) for n in body_nodes(function))
        assert rotary._looks_like_attention(ctx, function) is (printed and products)


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_remembered_callees_answer_as_the_resolver(path):
    ctx = _context(path)
    calls = [n for n in _walk(ctx.module, True) if isinstance(n, cst.Call)]
    for _ in range(2):  # the second round is answered from `NameResolver.imported`'s memo
        assert [ctx.names.callee(n) for n in calls] == [ctx.names._imported_name(n.func) for n in calls]


def _plain_table_statements(function, user, seed):
    """`positions.table_statements` as it was: every statement's names read again per question."""
    body = positions._top_level(function)
    if user not in body:
        return None
    names = dataflow.read_names(seed) - {"self"}
    while True:
        more = set(names)
        for statement in body[:body.index(user)]:
            if (positions._defines(statement) or set()) & names:
                more |= dataflow.read_names(statement) - {"self"}
        if more == names:
            break
        names = more
    while True:
        chosen = [s for s in body if s is not user and (positions._defines(s) or {""}) <= names]
        chosen_ids = {id(s) for s in chosen}
        keep = {n for n in names if all(
            id(s) in chosen_ids or (n not in dataflow.read_names(s) and n not in (positions._defines(s) or set()))
            for s in body if s is not user)}
        if keep == names:
            return chosen
        names = keep


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_table_statements_answer_as_the_repeated_reads(path):
    ctx = _context(path)
    ctx.index
    for function in _functions(ctx):
        for user in positions._top_level(function):
            seeds = [n for n in _walk(user, False) if isinstance(n, (cst.Name, cst.Attribute, cst.Call))][:3]
            for seed in seeds:
                assert positions.table_statements(function, user, seed) == \
                    _plain_table_statements(function, user, seed)


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_constructor_arguments_answer_as_the_scan_of_every_call(path):
    from tf_migrate.analysis import census
    from tf_migrate.rules.rope import tree

    walk = census.Walker(census.FileIndex(ast.parse(path.read_text())))
    for info in walk.index.classes:
        init = info.methods.get("__init__")
        for parameter in (init.args.args[1:] if isinstance(init, ast.FunctionDef) else []):
            scanned = next((value for call in walk.index.calls
                            if isinstance(call.func, ast.Name) and call.func.id == info.node.name
                            for value in [tree._argument(call, info.node, parameter)] if value is not None), None)
            assert tree._constructed_with(walk, info.node, parameter) is scanned


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_submodule_owners_answer_as_the_scan_of_every_class(path):
    from tf_migrate.rules.rope import position_models

    ctx = _context(path)
    ctx.index
    for module in ctx.module_classes:
        every = position_models._instantiations(ctx, module)
        scanned = [(cls, sub) for cls in ctx.module_classes for sub in cls.submodules.values() if sub.call in every]
        found = [owner for call in every for owner in position_models._submodule_owners(ctx).get(id(call), ())]
        assert len(found) == len(scanned)
        if len(every) == 1:  # the only case `_user` reads the pairs themselves
            assert found == scanned


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_a_file_alone_has_no_constructor_argument_tables(path, tmp_path):
    """`argument_additions` stops before its walk when the run holds no other file; the walk itself,
    made to run by an empty second file, finds nothing there either."""
    from tf_migrate.rules.rope import tree

    alone = _context(path)
    assert tree.argument_additions(alone) == []
    walked = _context(path)
    other = tmp_path / "other.py"
    other.write_text("")
    walked.project.files = walked.project.files | {str(other)}
    assert list(tree._argument_additions(walked)) == []


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_files_with_a_flat_table_pass_the_text_filter(path):
    """rope/across.py skips files `may_hold_a_flat_table` rejects: none of them has a table that is
    not 2-D (nor a non-2-D export)."""
    from tf_migrate.analysis.census import FileIndex, Walker
    from tf_migrate.rules.rope.census import may_hold_a_flat_table, tables

    text = path.read_text()
    if not any(t in text for t in ("sin(", "sin_(")):
        return
    found = tables(Walker(FileIndex(ast.parse(text))))
    if any(not table.two_d for table in found):
        assert may_hold_a_flat_table(text)


def test_the_text_filter_leaves_out_sin_of_the_input():
    text = ("import torch\n\n\nclass Wave(torch.nn.Module):\n"
            "    def forward(self, x):\n        return x + torch.sin(x) * 2\n")
    from tf_migrate.analysis.census import FileIndex, Walker
    from tf_migrate.rules.rope.census import may_hold_a_flat_table, tables

    assert not may_hold_a_flat_table(text)
    assert all(table.two_d for table in tables(Walker(FileIndex(ast.parse(text)))))
