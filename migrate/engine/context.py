"""Everything a rule may ask about one parsed file."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Mapping

import libcst as cst
from libcst.metadata import PositionProvider

from tf_migrate.engine import suppress
from tf_migrate.analysis.names import NameResolver
from tf_migrate.analysis.index import NodeIndex
from tf_migrate.analysis.scopes import Scopes

if TYPE_CHECKING:
    from tf_migrate.analysis.modules import ModuleClass


class FileContext:
    def __init__(self, module: cst.Module, path: str, text: str) -> None:
        self.path = path
        self.wrapper = cst.MetadataWrapper(module, unsafe_skip_copy=True)
        self.module = self.wrapper.module
        self._memo: dict[str, Any] = {}
        self._skips = suppress.skip_comments(text)
        self.text = text

    @cached_property
    def names(self) -> NameResolver:
        return NameResolver(Scopes(self.module, self.parents, self.text))

    @cached_property
    def _positions(self) -> Mapping[cst.CSTNode, Any]:
        return self.wrapper.resolve(PositionProvider)

    @cached_property
    def index(self) -> NodeIndex:
        """The module's nodes by type, name, attribute and callee: whole-module searches as look-ups."""
        return NodeIndex(self.module)

    @property
    def parents(self) -> Mapping[cst.CSTNode, cst.CSTNode]:
        return self.index.parents

    @cached_property
    def module_classes(self) -> list["ModuleClass"]:
        from tf_migrate.analysis.modules import find_module_classes

        return find_module_classes(self)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """A per-file analysis computed once: rules share the context until one changes the file."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def line(self, node: cst.CSTNode) -> int:
        position = self._positions.get(node)
        return position.start.line if position else 0

    def column(self, node: cst.CSTNode) -> int:
        position = self._positions.get(node)
        return position.start.column if position else 0

    def lines(self, node: cst.CSTNode) -> range:
        position = self._positions[node]
        return range(position.start.line, position.end.line + 1)

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    def suppressed(self, code: str, node: cst.CSTNode) -> bool:
        """Whether a skip comment turns `code` off for `node` (its lines or an enclosing def)."""
        if not self._skips:
            return False
        if any(suppress.covers(self._skips.get(n, frozenset()), code) for n in self.lines(node)):
            return True
        current: cst.CSTNode | None = node
        while current is not None:
            if isinstance(current, (cst.FunctionDef, cst.ClassDef)):
                header = self.line(current.name)
                first = min([self.line(d) for d in current.decorators] + [header])
                for n in range(first - 1, header + 1):
                    if suppress.covers(self._skips.get(n, frozenset()), code):
                        return True
            current = self.parents.get(current)
        return False
