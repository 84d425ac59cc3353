"""Applying rule fixes to a module: node replacements, then the imports they need or free."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, RemoveImportsVisitor

from tf_migrate.engine.rule import Fix

if TYPE_CHECKING:
    from tf_migrate.analysis.index import NodeIndex


class _Replace(cst.CSTTransformer):
    def __init__(self, replacements: Mapping[Any, Any], inside: set[Any] | None = None) -> None:
        self.replacements = replacements
        self.inside = inside  # the nodes above some replaced node; None: visit every node

    def on_visit(self, node) -> bool:
        # A subtree holding no replaced node comes back unchanged: it need not be visited.
        return self.inside is None or node in self.inside

    def on_leave(self, original_node, updated_node):
        if original_node in self.replacements:
            replacement = self.replacements[original_node]
            # A callable wraps the updated node, so edits inside it survive (e.g. insert before).
            return replacement(updated_node) if callable(replacement) else replacement
        return updated_node


def replace_nodes(node: cst.CSTNode, replacements: Mapping[Any, Any],
                  parents: Mapping[cst.CSTNode, cst.CSTNode] | None = None) -> Any:
    """`node` with every (original) node in `replacements` swapped at once.

    With `parents` (the complete parent map of `node`'s tree, where no node object sits in two
    places), only the paths from `node` down to the replaced nodes are visited."""
    inside = None
    if parents is not None:
        inside = set()
        for replaced in replacements:
            current = parents.get(replaced)
            while current is not None and current not in inside:
                inside.add(current)
                current = parents.get(current)
    return node.visit(_Replace(replacements, inside))


class FixConflict(ValueError):
    """Two fixes of one rule claim the same node, or one would silently overwrite another's edit."""


def apply_fixes(module: cst.Module, fixes: Iterable[Fix],
                parents: Mapping[cst.CSTNode, cst.CSTNode] | None = None,
                index: "NodeIndex | None" = None,
                code_of: Callable[[cst.Module], str] | None = None) -> cst.Module:
    """`module` with every fix applied in one pass, then the imports the fixes add or may free.

    Conflicts are found before anything changes (see `conflicts`); `parents` (the module's parent
    map) lets that also catch an edit nested inside another fix's replaced node. With `index` (the
    module's `NodeIndex`), the pass visits only the paths down to the replaced nodes. `code_of`
    prints a module (the engine's `Printer`, which the caller then asks again for the result)."""
    fixes = list(fixes)
    problem = conflicts(fixes, parents or {})
    if problem:
        raise FixConflict(problem)
    replacements: dict[Any, Any] = {}
    for fix in fixes:
        replacements.update(fix.replacements)
    if not replacements:
        return module
    complete = index is not None and not index.shared and index.parents is parents
    module = replace_nodes(module, replacements, parents if complete else None)
    context = CodemodContext()
    needs_add = needs_remove = False
    removals = []
    for fix in fixes:
        for dotted, obj, alias in fix.imports:
            AddImportsVisitor.add_needed_import(context, dotted, obj, alias)
            needs_add = True
        for dotted, obj, alias in fix.maybe_unused_imports:
            RemoveImportsVisitor.remove_unused_import(context, dotted, obj, alias)
            removals.append((dotted, obj, alias))
            needs_remove = True
    if needs_add:
        module = add_imports(module, context)
    if needs_remove:
        code = code_of(module) if code_of is not None else module.code
        if not still_used(code, removals):
            module = _no_blank_start(remove_imports(module, code, removals, context))
    return module


def conflicts(fixes: list[Fix], parents: Mapping[cst.CSTNode, cst.CSTNode]) -> str | None:
    """Why these fixes cannot all apply: two of them replace the same node differently, or one
    replaces a node inside another's plain (not wrapping) replacement, whose edit would be lost."""
    owner: dict[Any, int] = {}
    for number, fix in enumerate(fixes):
        for node, replacement in fix.replacements.items():
            if node in owner and owner[node] != number and fixes[owner[node]].replacements[node] is not replacement:
                return f"the fixes at lines {fixes[owner[node]].line} and {fix.line} both replace one node"
            owner.setdefault(node, number)
    for node, number in owner.items():
        current = parents.get(node)
        while current is not None:
            if current in owner and owner[current] != number and not callable(fixes[owner[current]].replacements[current]):
                return (f"the fix at line {fixes[owner[current]].line} replaces code that holds the edit "
                        f"of the fix at line {fixes[number].line}")
            current = parents.get(current)
    return None


def add_imports(module: cst.Module, context: CodemodContext) -> cst.Module:
    """What `AddImportsVisitor` makes of `module`, computed over the module's head only.

    The visitor reads and changes only the leading run of import statements (after a docstring)
    and puts a blank line before the first statement after them; the rest of the body is passed
    through. Running it on the head alone spares a deep copy and a visit of the whole file."""
    _, end = _leading_imports(module)
    head = module.with_changes(body=module.body[:end + 1])
    done = AddImportsVisitor(context).transform_module(head)
    return module.with_changes(body=[*done.body, *module.body[end + 1:]])


def remove_imports(module: cst.Module, code: str, removals: list[tuple[str, str | None, str | None]],
                   context: CodemodContext) -> cst.Module:
    """What `RemoveImportsVisitor` (scheduled in `context` with `removals`; `code` is the module's
    text) makes of `module`, computed over the leading imports only when that is certain to agree.

    The visitor's scope analysis, deep copy and three visits of the whole file decide, per import
    it may remove, whether anything uses the name. When every such name is either read elsewhere
    (`still_used`: kept) or spelled nowhere in the file outside the leading import statements
    (no reference, `__all__` entry, string annotation or other import can then exist), the
    visitor run over those statements alone removes exactly what it removes from the whole file."""
    start, end = _leading_imports(module)
    head = "".join(module.code_for_node(statement) for statement in module.body[start:end])
    free = []
    # name -> free, and -> still used: fixes of many classes free the same few names
    free_names: dict[str, bool] = {}
    used_names: dict[str, bool] = {}
    for removal in removals:
        dotted, obj, alias = removal
        local = alias or obj or dotted
        if local not in free_names:
            free_names[local] = "." not in local and _spelled(local, code) == _spelled(local, head)
        if free_names[local]:
            free.append(removal)
            continue
        if local not in used_names:
            used_names[local] = still_used(code, [removal])
        if not used_names[local]:
            return RemoveImportsVisitor(context).transform_module(module)
    if not free:
        return module
    read_off = _head_without(module, start, end, free, code)
    if read_off is not None:
        return read_off
    only_free = CodemodContext()
    for removal in free:
        RemoveImportsVisitor.remove_unused_import(only_free, *removal)
    done = RemoveImportsVisitor(only_free).transform_module(module.with_changes(body=module.body[:end]))
    return module.with_changes(body=[*done.body, *module.body[end:]])


def _head_without(module: cst.Module, start: int, end: int, free: list[tuple[str, str | None, str | None]],
                  code: str) -> cst.Module | None:
    """What `RemoveImportsVisitor`, scheduled with `free`, makes of the import statements
    `module.body[start:end]`, read off the statements without building the visitor (its
    construction alone costs more than a small file's rules); None where that is not certain.

    The visitor matches an `import` alias by module and alias (one alias per module: the last
    scheduled), a `from` alias by module, name and alias, and removes a matched alias that nothing
    reads, exports or names in a string annotation; a statement left with no alias goes whole,
    comments on its lines included. Certain here: every matched alias's name is spelled once in
    the file (the import itself), and every statement loses all its aliases or none."""
    modules = {dotted: alias for dotted, obj, alias in free if obj is None}
    objects: dict[str, set[tuple[str, str | None]]] = {}
    for dotted, obj, alias in free:
        if obj is not None:
            objects.setdefault(dotted, set()).add((obj, alias))
    body = list(module.body)
    for at in range(end - 1, start - 1, -1):
        statement = body[at].body[0]
        matched = _matched_aliases(statement, modules, objects)
        if matched is None:
            return None
        if not matched:
            continue
        if len(matched) != len(statement.names):
            return None  # a partial removal re-punctuates the statement: the visitor does it
        for alias in matched:
            local = alias.evaluated_alias or alias.evaluated_name
            if "." in local or _spelled(local, code) != 1:
                return None
        del body[at]
    return module.with_changes(body=body) if len(body) != len(module.body) else module


def _matched_aliases(statement: cst.Import | cst.ImportFrom, modules: dict[str, str | None],
                     objects: dict[str, set[tuple[str, str | None]]]) -> list[cst.ImportAlias] | None:
    """The aliases of `statement` that `RemoveImportsVisitor` would consider removing; None where
    its answer for them depends on more than their use (`__future__` names are never removed)."""
    if isinstance(statement, cst.Import):
        return [alias for alias in statement.names
                if alias.evaluated_name in modules and alias.evaluated_alias == modules[alias.evaluated_name]]
    if isinstance(statement.names, cst.ImportStar):
        return []
    from libcst.helpers import get_absolute_module_from_package_for_import

    dotted = get_absolute_module_from_package_for_import(None, statement)
    if dotted is None or dotted not in objects:
        return []
    matched = [alias for alias in statement.names
               if (alias.evaluated_name, alias.evaluated_alias) in objects[dotted]]
    return None if matched and dotted == "__future__" else matched


def _spelled(name: str, text: str) -> int:
    import re

    return len(re.findall(rf"(?<!\w){re.escape(name)}(?!\w)", text))


def _leading_imports(module: cst.Module) -> tuple[int, int]:
    """Where the leading run of import statements (after a docstring) starts and ends in the body."""
    start = 1 if _docstring_first(module) else 0
    end = start
    while end < len(module.body) and _is_import_line(module.body[end]):
        end += 1
    return start, end


def _docstring_first(module: cst.Module) -> bool:
    """libcst's own test (`_skip_first`): never insert before a docstring or a `__strict__` flag."""
    from libcst.codemod.visitors._add_imports import _skip_first

    return _skip_first(module)


def _is_import_line(statement: cst.CSTNode) -> bool:
    return (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1
            and isinstance(statement.body[0], (cst.Import, cst.ImportFrom)))


def still_used(code: str, removals: list[tuple[str, str | None, str | None]]) -> bool:
    """Whether `RemoveImportsVisitor` (a scope analysis of the whole file) would keep every import
    the fixes may have freed, so that it need not run.

    Python's symbol tables answer it: no scope imports the name (nothing to remove), or only the
    module does and some scope reads it as a global (or the module reads it). Any doubt (a dotted
    import, a local import, code that does not compile) answers False, and the visitor decides."""
    import symtable

    try:
        top = symtable.symtable(code, "<fixed>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    kept: set[str] = set()  # fixes of many classes may free the same few names: each is read once
    for dotted, obj, alias in removals:
        local = alias or obj or dotted
        if local in kept:
            continue
        if "." in local or not _kept(top, local):
            return False
        kept.add(local)
    return True


def _kept(top: "symtable.SymbolTable", name: str) -> bool:
    imported_here = _imports(top, name)
    read = imported_here and top.lookup(name).is_referenced()
    pending = list(top.get_children())
    while pending:
        table = pending.pop()
        pending.extend(table.get_children())
        if _imports(table, name):
            return False  # a local import the visitor may remove
        if imported_here and not read and name in table.get_identifiers():
            symbol = table.lookup(name)
            read = symbol.is_referenced() and symbol.is_global()
    return read or not imported_here


def _imports(table: "symtable.SymbolTable", name: str) -> bool:
    return name in table.get_identifiers() and table.lookup(name).is_imported()


def _no_blank_start(module: cst.Module) -> cst.Module:
    """A removed first import must not leave its successor's blank lines at the top of the file."""
    if any(line.comment is not None for line in module.header):
        return module  # the blank line separates the header comments from the code
    if module.body and module.body[0].leading_lines and all(
            line.comment is None for line in module.body[0].leading_lines):
        return module.with_changes(body=[module.body[0].with_changes(leading_lines=[]), *module.body[1:]])
    return module
