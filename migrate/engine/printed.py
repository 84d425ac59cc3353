"""A module's text and its nodes' positions from one printing, as libcst's PositionProvider gives them.

`PositionProvider` prints the whole module, turning a line and column into objects for every token
and node, through a generator-based context manager: about twice the cost of parsing the file, paid
again by every rule that follows a changing one. Here the printing keeps only character offsets;
lines and columns are worked out for the nodes a rule asks about. The printed text is the
module's `code`, so a rewritten module is printed once for both.
"""

from __future__ import annotations

import re
from bisect import bisect_right
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
        spans = self.state.spans
        start = spans[self.start_node][0] if self.start_node is not None else self.start
        end = spans[self.end_node][1] if self.end_node is not None else self.state.offset
        spans[self.node] = (start, end)


class _OffsetState(CodegenState):
    """Libcst's printing state, recording each node's (start, end) character offsets.

    Same rules as `PositionProvidingCodegenState`: a syntactic position recorded inside a node's
    printing wins over its whole extent, which is recorded only when nothing was."""

    __slots__ = ("offset", "spans", "line_starts", "_stack")

    def __init__(self, module: cst.Module) -> None:
        super().__init__(default_indent=module.default_indent, default_newline=module.default_newline)
        self.offset = 0
        self.spans: dict[cst.CSTNode, tuple[int, int]] = {}
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
        if node not in self.spans:
            self.spans[node] = (start, self.offset)

    def record_syntactic_position(self, node: cst.CSTNode, *, start_node: cst.CSTNode | None = None,
                                  end_node: cst.CSTNode | None = None) -> _Recorded:
        return _Recorded(self, node, start_node, end_node)


class Positions(Mapping[cst.CSTNode, CodeRange]):
    """Node -> `CodeRange` (1-based lines, 0-based columns), computed when asked."""

    def __init__(self, spans: dict[cst.CSTNode, tuple[int, int]], line_starts: list[int]) -> None:
        self._spans = spans
        self._line_starts = line_starts

    def _position(self, offset: int) -> CodePosition:
        before = bisect_right(self._line_starts, offset)
        return CodePosition(before + 1, offset - (self._line_starts[before - 1] if before else 0))

    def __getitem__(self, node: cst.CSTNode) -> CodeRange:
        start, end = self._spans[node]
        return CodeRange(self._position(start), self._position(end))

    def __contains__(self, node: object) -> bool:
        return node in self._spans

    def __iter__(self) -> Iterator[cst.CSTNode]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)


def printed(module: cst.Module) -> tuple[str, Positions]:
    """`module.code` and the positions `PositionProvider` would give every node, in one printing."""
    state = _OffsetState(module)
    module._codegen(state)
    return "".join(state.tokens), Positions(state.spans, state.line_starts)


def positions(module: cst.Module) -> Mapping[cst.CSTNode, Any]:
    return printed(module)[1]
