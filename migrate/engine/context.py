"""Everything a rule may ask about one parsed file."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Mapping

import libcst as cst

from tf_migrate.engine import suppress
from tf_migrate.analysis.names import NameResolver
from tf_migrate.analysis.index import NodeIndex
from tf_migrate.analysis.scopes import Scopes

if TYPE_CHECKING:
    from tf_migrate.analysis.modules import ModuleClass
    from tf_migrate.analysis.project import ProjectIndex


class FileContext:
    def __init__(self, module: cst.Module, path: str, text: str, project: "ProjectIndex | None" = None,
                 source_path: str | None = None, positions: Mapping[cst.CSTNode, Any] | None = None,
                 earlier: NodeIndex | None = None,
                 printer: Callable[[cst.Module], tuple[str, Mapping[cst.CSTNode, Any]]] | None = None) -> None:
        """`earlier`: the index of the file's version a fix rewrote into `module` (its unchanged
        subtrees are copied from there). `printer`: prints the module when positions are asked
        (the engine's, which reuses that printing for the file's next versions)."""
        self.path = path
        self.source_path = source_path or path  # the file on disk, as the project index knows it
        self._project = project
        self.wrapper = cst.MetadataWrapper(module, unsafe_skip_copy=True)
        self.module = self.wrapper.module
        self._memo: dict[str, Any] = {}
        self._skips = suppress.skip_comments(text)
        self.used_skips: set[int] = set()  # lines of skip comments that turned a rule off
        self.text = text
        if positions is not None:  # from the printing that produced `text` (engine/printed.py)
            self._positions = positions
        self._earlier = earlier
        self._printer = printer

    @property
    def skips(self) -> dict[int, frozenset[str]]:
        """Line -> the codes a `# tf-migrate: skip` comment on it turns off."""
        return self._skips

    @cached_property
    def names(self) -> NameResolver:
        return NameResolver(Scopes(self.module, self.parents, self.text))

    @property
    def project(self) -> "ProjectIndex":
        """The run's whole-tree index (a single-file one when the context was made without it)."""
        if self._project is None:
            from tf_migrate.analysis.project import ProjectIndex

            self._project = ProjectIndex.for_files([self.source_path])
            self._project.add(self.source_path, self.text)
        if self._project.make_context is None:
            self._project.make_context = _other_file_context
        return self._project

    @property
    def project_key(self) -> str:
        """The file's key in the project index (its absolute path)."""
        from tf_migrate.analysis.project.index import absolute

        return absolute(self.source_path)

    @cached_property
    def _positions(self) -> Mapping[cst.CSTNode, Any]:
        """What `self.wrapper.resolve(PositionProvider)` gives, for a fraction of its cost."""
        if self._printer is not None:
            return self._printer(self.module)[1]
        from tf_migrate.engine.printed import positions

        return positions(self.module)

    @cached_property
    def index(self) -> NodeIndex:
        """The module's nodes by type, name, attribute and callee: whole-module searches as look-ups."""
        index, self._earlier = NodeIndex(self.module, self._earlier), None
        return index

    @property
    def parents(self) -> Mapping[cst.CSTNode, cst.CSTNode]:
        return self.index.parents

    @cached_property
    def module_classes(self) -> list["ModuleClass"]:
        from tf_migrate.analysis.modules import find_module_classes

        return find_module_classes(self)

    def release(self) -> None:
        """Forget every analysis of this version (the engine is done with it). Analyses refer back
        to the context (a remembered table whose questions read `ctx`): cycles that only the
        cycle collector frees, holding the whole version until it runs. Forgotten here, the
        version is freed as soon as nothing else holds it."""
        self._memo.clear()
        for name in _ANALYSES:
            self.__dict__.pop(name, None)

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
        for n in self.lines(node):
            if suppress.covers(self._skips.get(n, frozenset()), code):
                self.used_skips.add(n)
                return True
        current: cst.CSTNode | None = node
        while current is not None:
            if isinstance(current, (cst.FunctionDef, cst.ClassDef)):
                header = self.line(current.name)
                first = min([self.line(d) for d in current.decorators] + [header])
                for n in range(first - 1, header + 1):
                    if suppress.covers(self._skips.get(n, frozenset()), code):
                        self.used_skips.add(n)
                        return True
            current = self.parents.get(current)
        return False


# What `release` forgets besides the memo: every analysis the context computes when first asked.
_ANALYSES = tuple(name for name, value in vars(FileContext).items() if isinstance(value, cached_property))


def _other_file_context(project: "ProjectIndex", path: str, text: str) -> "FileContext | None":
    """The context of another project file, for a question that follows a call or a base there."""
    try:
        module = cst.parse_module(text)
    except cst.ParserSyntaxError:
        return None
    return FileContext(module, path, text, project, path)
