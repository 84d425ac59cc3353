"""One printing gives a module's code and the positions libcst's PositionProvider gives its nodes.

Compared node for node with the provider on every fixture and on files with unusual line ends,
indentation and strings; the engine's contexts read positions from here.
"""

from __future__ import annotations

import libcst as cst
import pytest
from libcst.metadata import PositionProvider

from helpers import FIXTURES
from tf_migrate.engine import printed as printed_module
from tf_migrate.engine.printed import Printer, positions, printed

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
    "# only a comment",  # a header, no body, no line end
    "\n\n# a comment\n\n",
    "x = 1\r\n\r\n# end\r",  # line ends mixed, a footer without its own
    "x = '''a\r\nb'''\ry = 2\n",
]


def _assert_same(module: cst.Module, printer=printed) -> None:
    expected = cst.MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    code, found = printer(module)
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


def _versions(module: cst.Module) -> list[cst.Module]:
    """Versions as fixes make them: statements rebuilt in place, one inserted before the others,
    one removed, the file's last line end dropped -- the rest the same objects."""
    body = list(module.body)
    rebuilt = [cst.parse_statement(module.code_for_node(s)) if i % 3 == 0 else s for i, s in enumerate(body)]
    versions = [module.with_changes(body=rebuilt)]
    versions.append(versions[-1].with_changes(body=[cst.parse_statement("import torch\n"), *rebuilt]))
    versions.append(versions[-1].with_changes(body=versions[-1].body[:-1]))
    versions.append(versions[-1].with_changes(has_trailing_newline=False))
    versions.append(versions[-1].with_changes(footer=[cst.EmptyLine(comment=cst.Comment("# end"))]))
    return versions


def _rebuilt_inside(statement: cst.CSTNode) -> cst.CSTNode:
    """`statement` with the last statement of its block rebuilt (a new object) and, in each block
    below, the same: everything else the same objects, as a fix that changes one line leaves it."""
    body = getattr(statement, "body", None)
    if not isinstance(body, cst.IndentedBlock) or not body.body:
        return statement
    inner = list(body.body)
    last = inner[-1]
    replaced = _rebuilt_inside(last)
    inner[-1] = replaced if replaced is not last else last.deep_clone()
    return statement.with_changes(body=body.with_changes(body=inner))


def _nested_versions(module: cst.Module) -> list[cst.Module]:
    """Versions whose rebuilt top-level statements keep most of their inner statements: one line
    changed deep inside; then the same inner statements under one more indentation level (an
    `if True:` around a def's body), and one inner statement printed in two places."""
    versions = [module.with_changes(body=[_rebuilt_inside(s) for s in module.body])]
    deeper, twice = [], []
    for statement in versions[-1].body:
        body = getattr(statement, "body", None)
        if isinstance(statement, cst.FunctionDef) and isinstance(body, cst.IndentedBlock):
            wrapped = cst.If(test=cst.Name("True"), body=body)
            deeper.append(statement.with_changes(body=body.with_changes(body=[wrapped])))
            twice.append(statement.with_changes(body=body.with_changes(body=[*body.body, body.body[0]])))
        else:
            deeper.append(statement)
            twice.append(statement)
    versions.append(versions[-1].with_changes(body=deeper))
    versions.append(versions[-2].with_changes(body=twice))
    versions.append(versions[-3].with_changes(body=[_rebuilt_inside(s) for s in versions[-3].body]))
    return versions


VERSIONS = [_versions, _nested_versions]


@pytest.mark.parametrize("make", VERSIONS, ids=["top-level", "nested"])
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_printer_reusing_unchanged_statements_gives_every_version_as_printed(path, make):
    module = cst.parse_module(path.read_text())
    printer = Printer()
    _assert_same(module, printer)
    for version in make(module):
        _assert_same(version, printer)
        assert printer.code(module) == module.code  # remembered, not reprinted from the latest


@pytest.mark.parametrize("make", VERSIONS, ids=["top-level", "nested"])
@pytest.mark.parametrize("source", ODD)
def test_printer_in_unusual_files(source, make):
    module = cst.parse_module(source)
    printer = Printer()
    _assert_same(module, printer)
    for version in make(module):
        _assert_same(version, printer)


def test_printer_prints_only_the_statements_a_version_changed(monkeypatch):
    made = []
    statement = printed_module._Statement

    class Counted(statement):
        __slots__ = ()

        def __init__(self, module, node, earlier=None):
            made.append(node)
            super().__init__(module, node, earlier)

    monkeypatch.setattr(printed_module, "_Statement", Counted)
    module = cst.parse_module("import math\n\n\ndef f(x):\n    return x\n\n\ndef g(x):\n    return x\n")
    printer = Printer()
    printer(module)
    assert made == list(module.body)
    made.clear()
    changed = cst.parse_statement("def g(x):\n    return -x\n")
    printer(module.with_changes(body=[*module.body[:2], changed]))
    assert made == [changed]
    made.clear()
    assert printer.code(module) == module.code and made == []  # the file as parsed is remembered


def test_printer_copies_the_inner_statements_a_fix_left_alone(monkeypatch):
    copied = []
    copy = printed_module._OffsetState._copy

    def recording(state, statement, *rest):
        done = copy(state, statement, *rest)
        if done:
            copied.append(statement)
        return done

    module = cst.parse_module("class A:\n    def f(self):\n        return 1\n\n    def g(self):\n"
                              "        x = 2\n        return x\n")
    printer = Printer()
    printer(module)
    f, g = module.body[0].body.body
    changed = g.with_changes(body=g.body.with_changes(body=[g.body.body[0], cst.parse_statement("return -x\n")]))
    version = module.with_changes(body=[module.body[0].with_changes(body=module.body[0].body.with_changes(
        body=[f, changed]))])
    monkeypatch.setattr(printed_module._OffsetState, "_copy", recording)
    _assert_same(version, printer)
    assert copied == [f, g.body.body[0]]  # the method and the line the fix left alone, not the new ones


def _sharing_comment(first, second):
    comment = cst.EmptyLine(comment=cst.Comment("# shared"))  # recorded when printed (after_codegen)
    return first.with_changes(leading_lines=[comment]), second.with_changes(leading_lines=[comment])


def _sharing_name(first, second):
    name = cst.Name("v")  # recorded inside its parentheses (`_Parenthesized`)
    return (first.with_changes(body=[first.body[0].with_changes(value=name)]),
            second.with_changes(body=[second.body[0].with_changes(value=name)]))


def _sharing_pass(first, second):
    statement = cst.Pass()  # recorded at its syntactic position (`_Recorded`)
    return first.with_changes(body=[statement]), second.with_changes(body=[statement])


@pytest.mark.parametrize("share", [_sharing_comment, _sharing_name, _sharing_pass])
def test_a_printing_that_met_a_node_twice_is_not_copied_from(share):
    """The second statement holding a shared node does not record it (its first place did):
    copied into a version without the first, that node would have no position."""
    module = cst.parse_module("def f():\n    x = 1\n    y = 2\n")
    function = module.body[0]
    first, second = share(*function.body.body)
    both = module.with_changes(body=[function.with_changes(body=function.body.with_changes(body=[first, second]))])
    alone = module.with_changes(body=[function.with_changes(body=function.body.with_changes(body=[second]))])
    printer = Printer()
    printer(both)
    _assert_same(alone, printer)


def test_a_node_printed_in_two_places_is_printed_whole():
    shared = cst.parse_statement("y = 1\n")
    first = cst.parse_module("x = 0\n")
    module = first.with_changes(body=[shared, *first.body, shared])
    printer = Printer()
    printer(first)
    code, found = printer(module)
    expected_code, expected = printed(module)
    assert code == expected_code == "y = 1\nx = 0\ny = 1\n"
    assert {n: found[n] for n in expected} == dict(expected.items())
    inner = cst.parse_statement("z = f(a)\n")
    call = inner.body[0].value
    twice = first.with_changes(body=[inner, cst.SimpleStatementLine([cst.Expr(call)])])
    code, found = printer(twice)
    assert code == printed(twice)[0] and found[call] == printed(twice)[1][call]


def test_libcst_prints_its_own_way_again_after_a_printing():
    """The plain parentheses (`_Parenthesized`) are in place only while this module prints."""
    from libcst._nodes.expression import _BaseParenthesizedNode

    own = _BaseParenthesizedNode.__dict__["_parenthesize"]
    module = cst.parse_module("x = (a + (b))\n")
    Printer()(module)
    printed(module)
    assert _BaseParenthesizedNode.__dict__["_parenthesize"] is own
    assert module.code == "x = (a + (b))\n"
