"""A module's text and its nodes' positions from one printing, as libcst's PositionProvider gives them.

`PositionProvider` prints the whole module, turning a line and column into objects for every token
and node, through a generator-based context manager: about twice the cost of parsing the file, paid
again by every rule that follows a changing one. Here the printing keeps only character offsets;
lines and columns are worked out for the nodes a rule asks about. The printed text is the
module's `code`, so a rewritten module is printed once for both.

A fix rebuilds only the top-level statements it touches; the others are the same objects in the
new module. A top-level statement prints the same text whatever surrounds it (nothing is indented
around it; the module's indent and newline are the same), so a `Printer` keeps each top-level
statement's printing, offsets relative to its start, and prints only the new ones.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import libcst as cst
from libcst._nodes.internal import CodegenState
from libcst._position import CodePosition, CodeRange

_NEWLINE = re.compile(r"\r\n?|\n")  # libcst's own (position_provider.NEWLINE_RE)


class _Recorded:
    """`record_syntactic_position` as a plain context manager (entered once per call site)."""

    __slots__ = ("state", "node", "start_node", "end_node", "start")

    def __init__(self, state: "_OffsetState", node: cst.CSTNode, start_node: cst.CSTNode | None,
                 end_node: cst.CSTNode | None) -> None:
        self.state, self.node, self.start_node, self.end_node = state, node, start_node, end_node

    def __enter__(self) -> None:
        self.start = self.state.offset

    def __exit__(self, *exc: object) -> None:
        state = self.state
        spans = state.spans
        start = spans[id(self.start_node)][1] if self.start_node is not None else self.start
        end = spans[id(self.end_node)][2] if self.end_node is not None else state.offset
        if id(self.node) not in spans:
            state.nodes.append(self.node)
        spans[id(self.node)] = (state.key, start, end)


class _OffsetState(CodegenState):
    """Libcst's printing state, recording each node's (key, start, end): character offsets from the
    start of the printing of `key` (a top-level statement printed on its own; None: the module).
    Spans are keyed by the node's `id` (libcst's `__hash__` is a Python call, twice per node);
    `nodes` keeps the nodes, in the order first recorded.

    Same rules as `PositionProvidingCodegenState`: a syntactic position recorded inside a node's
    printing wins over its whole extent, which is recorded only when nothing was."""

    __slots__ = ("key", "offset", "spans", "nodes", "line_starts", "_stack")

    def __init__(self, module: cst.Module, key: cst.CSTNode | None = None) -> None:
        super().__init__(default_indent=module.default_indent, default_newline=module.default_newline)
        self.key = id(key) if key is not None else None
        self.offset = 0
        self.spans: dict[int, tuple[Any, int, int]] = {}
        self.nodes: list[cst.CSTNode] = []
        self.line_starts: list[int] = []  # offsets just after each newline, in printing order
        self._stack: list[int] = []

    def add_indent_tokens(self) -> None:
        self.tokens.extend(self.indent_tokens)
        for token in self.indent_tokens:
            self._advance(token)

    def add_token(self, value: str) -> None:
        self.tokens.append(value)
        self._advance(value)

    def _advance(self, value: str) -> None:
        if "\n" in value or "\r" in value:  # newlines are counted per token, as libcst does
            self.line_starts.extend(self.offset + match.end() for match in _NEWLINE.finditer(value))
        self.offset += len(value)

    def before_codegen(self, node: cst.CSTNode) -> None:
        self._stack.append(self.offset)

    def after_codegen(self, node: cst.CSTNode) -> None:
        start = self._stack.pop()
        if id(node) not in self.spans:
            self.spans[id(node)] = (self.key, start, self.offset)
            self.nodes.append(node)

    def record_syntactic_position(self, node: cst.CSTNode, *, start_node: cst.CSTNode | None = None,
                                  end_node: cst.CSTNode | None = None) -> _Recorded:
        return _Recorded(self, node, start_node, end_node)


class _Parenthesized:
    """What libcst's `_parenthesize` does around an expression's printing, for an `_OffsetState`:
    the left parentheses, the expression's own span recorded (as `record_syntactic_position`
    records it), the right parentheses. Libcst's is a generator behind contextlib's wrapper,
    entered for every expression printed: about a tenth of a printing."""

    __slots__ = ("node", "state", "start")

    def __init__(self, node: cst.CSTNode, state: _OffsetState) -> None:
        self.node, self.state = node, state

    def __enter__(self) -> None:
        for lpar in self.node.lpar:
            lpar._codegen(self.state)
        self.start = self.state.offset

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is not None:  # the printing failed: as the generator, nothing more is printed
            return
        state, node = self.state, self.node
        if id(node) not in state.spans:
            state.nodes.append(node)
        state.spans[id(node)] = (state.key, self.start, state.offset)
        for rpar in node.rpar:
            rpar._codegen(state)


try:
    from libcst._nodes.expression import _BaseParenthesizedNode
    _LIBCST_PARENTHESIZE = _BaseParenthesizedNode.__dict__["_parenthesize"]
except (ImportError, KeyError):  # a libcst laid out otherwise: its own printing, as it is
    _BaseParenthesizedNode = None


def _parenthesize(node: cst.CSTNode, state: CodegenState) -> Any:
    if type(state) is _OffsetState:
        return _Parenthesized(node, state)
    return _LIBCST_PARENTHESIZE(node, state)


@contextmanager
def _plain_parentheses() -> Iterator[None]:
    """Libcst's expressions print their parentheses through `_Parenthesized` while inside."""
    if _BaseParenthesizedNode is None:
        yield
        return
    outer = _BaseParenthesizedNode.__dict__["_parenthesize"]
    _BaseParenthesizedNode._parenthesize = _parenthesize
    try:
        yield
    finally:
        _BaseParenthesizedNode._parenthesize = outer


class Positions(Mapping[cst.CSTNode, CodeRange]):
    """Node -> `CodeRange` (1-based lines, 0-based columns), computed when asked."""

    def __init__(self, spans: dict[int, tuple[Any, int, int]], nodes: list[cst.CSTNode],
                 line_starts: list[int], bases: dict[Any, int]) -> None:
        self._spans = spans  # by id of the node: `nodes` keeps them alive, so no other object has one
        self._nodes = nodes
        self._line_starts = line_starts
        self._bases = bases  # where the printing of each key (see `_OffsetState`) starts

    def _position(self, offset: int) -> CodePosition:
        before = bisect_right(self._line_starts, offset)
        return CodePosition(before + 1, offset - (self._line_starts[before - 1] if before else 0))

    def __getitem__(self, node: cst.CSTNode) -> CodeRange:
        found = self._spans.get(id(node))
        if found is None:
            raise KeyError(node)
        key, start, end = found
        base = self._bases[key]
        return CodeRange(self._position(base + start), self._position(base + end))

    def get(self, node: object, default: Any = None) -> Any:
        return self[node] if id(node) in self._spans else default

    def __contains__(self, node: object) -> bool:
        return id(node) in self._spans

    def __iter__(self) -> Iterator[cst.CSTNode]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._spans)


class _Statement:
    """One top-level statement printed on its own: its text, spans and line starts relative to it."""

    __slots__ = ("text", "spans", "nodes", "line_starts", "last_token")

    def __init__(self, module: cst.Module, statement: cst.CSTNode) -> None:
        state = _OffsetState(module, statement)
        statement._codegen(state)
        self.text = "".join(state.tokens)
        self.spans = state.spans
        self.nodes = state.nodes
        self.line_starts = state.line_starts
        self.last_token = state.tokens[-1] if state.tokens else None


def printed(module: cst.Module) -> tuple[str, Positions]:
    """`module.code` and the positions `PositionProvider` would give every node, in one printing."""
    state = _OffsetState(module)
    with _plain_parentheses():
        module._codegen(state)
    return "".join(state.tokens), Positions(state.spans, state.nodes, state.line_starts, {None: 0})


def positions(module: cst.Module) -> Mapping[cst.CSTNode, Any]:
    return printed(module)[1]


class Printer:
    """Prints the versions of one file's module (each rule's fixes make one), reusing the printing
    of every top-level statement the previous version also had (the same object)."""

    def __init__(self) -> None:
        self._statements: dict[cst.CSTNode, _Statement] = {}  # of the latest printing
        self._layout: tuple[str, str] | None = None  # its module's indent and newline
        self._latest: tuple[cst.Module, str, Positions] | None = None
        self._first: tuple[cst.Module, str] | None = None  # the file as parsed, when printed first

    def __call__(self, module: cst.Module) -> tuple[str, Positions]:
        if self._latest is not None and self._latest[0] is module:
            return self._latest[1], self._latest[2]
        layout = (module.default_indent, module.default_newline)
        earlier = self._statements if layout == self._layout else {}
        with _plain_parentheses():
            statements = {statement: earlier.get(statement) or _Statement(module, statement)
                          for statement in module.body}
            found = _assembled(module, statements)
            code, where = found if found is not None else printed(module)
        self._statements, self._layout = (statements, layout) if found is not None else ({}, None)
        self._latest = (module, code, where)
        self._first = self._first or (module, code)
        return code, where

    def code(self, module: cst.Module) -> str:
        """`module.code`: remembered for the first and the latest module printed (the file as
        parsed, for the check that libcst reproduces it; the version a fix just made)."""
        if self._first is not None and self._first[0] is module:
            return self._first[1]
        return self(module)[0]


def _assembled(module: cst.Module, statements: dict[cst.CSTNode, _Statement]) -> tuple[str, Positions] | None:
    """What `printed` gives, from the statements' own printings (`Module._codegen_impl` in order:
    header, body, footer, then the trailing newline dropped or added). None where that could differ:
    a node object printed in two places (the first printing's span is kept), or a statement with no
    tokens (the dropped trailing newline would be another statement's)."""
    if len(statements) != len(module.body) or any(s.last_token is None for s in statements.values()):
        return None
    state = _OffsetState(module)
    state.before_codegen(module)
    for node in module.header:
        node._codegen(state)
    bases: dict[Any, int] = {None: 0}
    last: _Statement | None = None
    for statement in module.body:
        printing = statements[statement]
        bases[id(statement)] = state.offset
        state.line_starts.extend([state.offset + start for start in printing.line_starts])
        state.tokens.append(printing.text)
        state.offset += len(printing.text)
        last = printing
    body_end = len(state.tokens)
    for node in module.footer:
        node._codegen(state)
    if module.has_trailing_newline:
        if not state.tokens:
            state.add_token(state.default_newline)
    elif state.tokens:  # `pop_trailing_newline`: drops the last token (offsets keep counting it)
        if last is not None and len(state.tokens) == body_end:
            state.tokens[-1] = last.text[:len(last.text) - len(last.last_token)]
        else:
            state.tokens.pop()
    state.after_codegen(module)
    spans: dict[int, tuple[Any, int, int]] = {}
    nodes: list[cst.CSTNode] = []
    for printing in statements.values():
        spans.update(printing.spans)
        nodes.extend(printing.nodes)
    spans.update(state.spans)
    nodes.extend(state.nodes)
    if len(spans) != len(nodes):
        return None
    return "".join(state.tokens), Positions(spans, nodes, state.line_starts, bases)
