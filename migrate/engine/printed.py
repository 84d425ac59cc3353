"""A module's text and its nodes' positions from one printing, as libcst's PositionProvider gives them.

`PositionProvider` prints the whole module, turning a line and column into objects for every token
and node, through a generator-based context manager: about twice the cost of parsing the file, paid
again by every rule that follows a changing one. Here the printing keeps only character offsets;
lines and columns are worked out for the nodes a rule asks about. The printed text is the
module's `code`, so a rewritten module is printed once for both.

A fix rebuilds only the top-level statements it touches; the others are the same objects in the
new module. A top-level statement prints the same text whatever surrounds it (nothing is indented
around it; the module's indent and newline are the same), so a `Printer` keeps each top-level
statement's printing, offsets relative to its start, and prints only the new ones. Inside a
rebuilt one, the statements of its blocks that the fix left alone (the methods of a class it did
not touch, the lines of a method around the ones it replaced) are the same objects too: a
statement prints the same text under the same indentation, so their printing is copied from the
previous version's, offsets shifted.
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
        elif spans[id(self.node)][1] < state._stack[-1]:
            state.foreign = True
        spans[id(self.node)] = (state.key, start, end)


class _OffsetState(CodegenState):
    """Libcst's printing state, recording each node's (key, start, end): character offsets from the
    start of the printing of `key` (a top-level statement printed on its own; None: the module).
    Spans are keyed by the node's `id` (libcst's `__hash__` is a Python call, twice per node);
    `nodes` keeps the nodes, in the order first recorded.

    Same rules as `PositionProvidingCodegenState`: a syntactic position recorded inside a node's
    printing wins over its whole extent, which is recorded only when nothing was.

    `earlier`: the statements of blocks a previous printing recorded (`_Block`), by id, whose
    printing is copied when the same statement is printed under the same indentation; `blocks`
    records this printing's. A node object met in two places (`foreign`: one it was recorded at
    before) leaves this printing's records unusable: the copy of a statement gives its own nodes
    their spans, and only where each is printed once is that what printing it gives."""

    __slots__ = ("key", "offset", "spans", "nodes", "line_starts", "_stack", "earlier", "blocks", "foreign")

    def __init__(self, module: cst.Module, key: cst.CSTNode | None = None,
                 earlier: "dict[int, tuple[_Statement, int]] | None" = None) -> None:
        super().__init__(default_indent=module.default_indent, default_newline=module.default_newline)
        self.key = id(key) if key is not None else None
        self.offset = 0
        self.spans: dict[int, tuple[Any, int, int]] = {}
        self.nodes: list[cst.CSTNode] = []
        self.line_starts: list[int] = []  # offsets just after each newline, in printing order
        self._stack: list[int] = []
        self.earlier = earlier or {}
        self.blocks: list[_Block] | None = [] if key is not None else None
        self.foreign = False

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
        found = self.spans.get(id(node))
        if found is None:
            self.spans[id(node)] = (self.key, start, self.offset)
            self.nodes.append(node)
        elif found[1] < start:
            self.foreign = True

    def block_statement(self, statement: cst.CSTNode) -> None:
        """Print a statement of an indented block: copied from an earlier printing of the same
        object under the same indentation, else printed (and recorded, for the next printing)."""
        indent = tuple(self.indent_tokens)
        found = self.earlier.get(id(statement))
        if found is not None and self._copy(statement, indent, *found):
            return
        start, nodes, lines, tokens = self.offset, len(self.nodes), len(self.line_starts), len(self.tokens)
        blocks = self.blocks
        inner = len(blocks) if blocks is not None else 0
        statement._codegen(self)
        if blocks is not None and len(self.tokens) > tokens:
            blocks.append(_Block(statement, indent, start, self.offset, nodes, len(self.nodes), lines,
                                 len(self.line_starts), inner, self.tokens[-1]))

    def _copy(self, statement: cst.CSTNode, indent: tuple[str, ...], printing: "_Statement", at: int) -> bool:
        """Append the block statement `printing.blocks[at]` (its text, its nodes' spans and its line
        starts, shifted to here) and the records of the blocks inside it. False, having done
        nothing, when it is another statement or indentation. (A statement met twice is copied
        twice: its nodes listed twice, `_assembled` prints the module whole.)"""
        block = printing.blocks[at]
        if block.node is not statement or block.indent != indent:
            return False
        spans = self.spans
        nodes = printing.nodes[block.first_node:block.end_node]
        shift = self.offset - block.start
        key = self.key
        old = printing.spans
        for node in nodes:
            _, start, end = old[id(node)]
            spans[id(node)] = (key, start + shift, end + shift)
        node_shift = len(self.nodes) - block.first_node
        line_shift = len(self.line_starts) - block.first_line
        self.nodes.extend(nodes)
        self.line_starts.extend([start + shift for start in printing.line_starts[block.first_line:block.end_line]])
        text = printing.text[block.start:block.end]
        if len(text) > len(block.last_token):
            self.tokens.append(text[:len(text) - len(block.last_token)])
        self.tokens.append(block.last_token)
        self.offset += len(text)
        if self.blocks is not None:
            inner_shift = len(self.blocks) - block.inner_start
            self.blocks.extend(inner.shifted(shift, node_shift, line_shift, inner_shift)
                               for inner in printing.blocks[block.inner_start:at + 1])
        return True

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
        found = state.spans.get(id(node))
        if found is None:
            state.nodes.append(node)
        elif found[1] < state._stack[-1]:
            state.foreign = True
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
    """Libcst's expressions print their parentheses through `_Parenthesized`, and its indented
    blocks their statements through `_OffsetState.block_statement`, while inside."""
    blocks = cst.IndentedBlock.__dict__["_codegen_impl"]
    cst.IndentedBlock._codegen_impl = _indented_block
    if _BaseParenthesizedNode is None:
        try:
            yield
        finally:
            cst.IndentedBlock._codegen_impl = blocks
        return
    outer = _BaseParenthesizedNode.__dict__["_parenthesize"]
    _BaseParenthesizedNode._parenthesize = _parenthesize
    try:
        yield
    finally:
        _BaseParenthesizedNode._parenthesize = outer
        cst.IndentedBlock._codegen_impl = blocks


class _Block:
    """A statement of an indented block within a top-level statement's printing: its indentation,
    where its text lies (`start`, `end`: offsets in that printing), its nodes (`first_node`,
    `end_node`: indices of the printing's nodes) and line starts, the printing's records of the
    blocks inside it (from `inner_start` up to its own), and its last token."""

    __slots__ = ("node", "indent", "start", "end", "first_node", "end_node", "first_line", "end_line",
                 "inner_start", "last_token")

    def __init__(self, node: cst.CSTNode, indent: tuple[str, ...], start: int, end: int, first_node: int,
                 end_node: int, first_line: int, end_line: int, inner_start: int, last_token: str) -> None:
        self.node, self.indent, self.start, self.end = node, indent, start, end
        self.first_node, self.end_node, self.first_line, self.end_line = first_node, end_node, first_line, end_line
        self.inner_start, self.last_token = inner_start, last_token

    def shifted(self, offset: int, nodes: int, lines: int, blocks: int) -> "_Block":
        return _Block(self.node, self.indent, self.start + offset, self.end + offset, self.first_node + nodes,
                      self.end_node + nodes, self.first_line + lines, self.end_line + lines,
                      self.inner_start + blocks, self.last_token)


def _indented_block(block: cst.IndentedBlock, state: CodegenState) -> None:
    """`IndentedBlock._codegen_impl`, each statement printed through `_OffsetState.block_statement`."""
    if type(state) is not _OffsetState:
        _LIBCST_INDENTED_BLOCK(block, state)
        return
    block.header._codegen(state)
    state.increase_indent(state.default_indent if block.indent is None else block.indent)
    if block.body:
        with state.record_syntactic_position(block, start_node=block.body[0], end_node=block.body[-1]):
            for statement in block.body:
                state.block_statement(statement)
    else:
        state.add_indent_tokens()
        with state.record_syntactic_position(block):
            state.add_token("pass")
        state.add_token(state.default_newline)
    for line in block.footer:
        line._codegen(state)
    state.decrease_indent()


_LIBCST_INDENTED_BLOCK = cst.IndentedBlock._codegen_impl


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
    """One top-level statement printed on its own: its text, spans and line starts relative to it,
    and the statements of its blocks (`_Block`) for the next version's printing to copy.
    `earlier`: those of the previous version's printings (see `_OffsetState`)."""

    __slots__ = ("text", "spans", "nodes", "line_starts", "last_token", "blocks")

    def __init__(self, module: cst.Module, statement: cst.CSTNode,
                 earlier: "dict[int, tuple[_Statement, int]] | None" = None) -> None:
        state = _OffsetState(module, statement, earlier)
        statement._codegen(state)
        self.text = "".join(state.tokens)
        self.spans = state.spans
        self.nodes = state.nodes
        self.line_starts = state.line_starts
        self.last_token = state.tokens[-1] if state.tokens else None
        self.blocks: list[_Block] = [] if state.foreign else state.blocks


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
        kept = set(map(id, module.body))
        inside = _block_statements(printing for statement, printing in earlier.items() if id(statement) not in kept)
        with _plain_parentheses():
            statements = {statement: earlier.get(statement) or _Statement(module, statement, inside)
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


def _block_statements(printings: Iterator[_Statement]) -> dict[int, tuple[_Statement, int]]:
    """The recorded block statements of `printings`, by id: (the printing, the record's index)."""
    found: dict[int, tuple[_Statement, int]] = {}
    for printing in printings:
        for at, block in enumerate(printing.blocks):
            found[id(block.node)] = (printing, at)
    return found


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
