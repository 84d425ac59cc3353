"""Applying rule fixes to a module: node replacements, then the imports they need or free."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, RemoveImportsVisitor

from tf_migrate.engine.rule import Fix


class _Replace(cst.CSTTransformer):
    def __init__(self, replacements: Mapping[Any, Any]) -> None:
        self.replacements = replacements

    def on_leave(self, original_node, updated_node):
        if original_node in self.replacements:
            replacement = self.replacements[original_node]
            # A callable wraps the updated node, so edits inside it survive (e.g. insert before).
            return replacement(updated_node) if callable(replacement) else replacement
        return updated_node


def replace_nodes(node: cst.CSTNode, replacements: Mapping[Any, Any]) -> Any:
    """`node` with every (original) node in `replacements` swapped at once."""
    return node.visit(_Replace(replacements))


def apply_fixes(module: cst.Module, fixes: Iterable[Fix]) -> cst.Module:
    fixes = list(fixes)
    replacements: dict[Any, Any] = {}
    for fix in fixes:
        replacements.update(fix.replacements)
    if not replacements:
        return module
    module = replace_nodes(module, replacements)
    context = CodemodContext()
    needs_add = needs_remove = False
    for fix in fixes:
        for dotted, obj, alias in fix.imports:
            AddImportsVisitor.add_needed_import(context, dotted, obj, alias)
            needs_add = True
        for dotted, obj, alias in fix.maybe_unused_imports:
            RemoveImportsVisitor.remove_unused_import(context, dotted, obj, alias)
            needs_remove = True
    if needs_add:
        module = AddImportsVisitor(context).transform_module(module)
    if needs_remove:
        module = _no_blank_start(RemoveImportsVisitor(context).transform_module(module))
    return module


def _no_blank_start(module: cst.Module) -> cst.Module:
    """A removed first import must not leave its successor's blank lines at the top of the file."""
    if any(line.comment is not None for line in module.header):
        return module  # the blank line separates the header comments from the code
    if module.body and module.body[0].leading_lines and all(
            line.comment is None for line in module.body[0].leading_lines):
        return module.with_changes(body=[module.body[0].with_changes(leading_lines=[]), *module.body[1:]])
    return module
