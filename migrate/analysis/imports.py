"""Referring to torch modules the way the file already does, adding an import only when needed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.dataflow import binds

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext

FUNCTIONAL = "torch.nn.functional"


def _module_aliases(module: cst.Module) -> dict[str, str]:
    """Dotted module -> the local name a top-level import gives it."""
    aliases: dict[str, str] = {}
    for statement in module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, cst.Import):
                for alias in small.names:
                    dotted = cst.Module([]).code_for_node(alias.name)
                    if alias.asname is not None:
                        aliases.setdefault(dotted, alias.asname.name.value)
                    else:
                        aliases.setdefault(dotted.split(".")[0], dotted.split(".")[0])
            elif isinstance(small, cst.ImportFrom) and small.module is not None and not small.relative:
                if isinstance(small.names, cst.ImportStar):
                    continue
                base = cst.Module([]).code_for_node(small.module)
                for alias in small.names:
                    local = alias.asname.name.value if alias.asname else alias.name.value
                    aliases.setdefault(f"{base}.{alias.name.value}", local)
    return aliases


def _bound_at_module_level(module: cst.Module, name: str) -> bool:
    return any(binds(statement, name) for statement in module.body)


def reference(ctx: "FileContext", dotted: str, preferred: str) -> tuple[str, tuple[str, str | None, str | None] | None]:
    """How to spell module `dotted` in this file, and the import to add (module, obj, alias) if any.

    Reuses an existing alias (`Fn` for `from torch.nn import functional as Fn`), otherwise adds
    `import <dotted> as <preferred>` when that name is free, otherwise spells it out from an
    imported parent (`nn.functional`) or from `torch`.
    """
    aliases = _module_aliases(ctx.module)
    if dotted in aliases:
        return aliases[dotted], None
    if not _bound_at_module_level(ctx.module, preferred):
        return preferred, (dotted, None, preferred)
    parent, _, last = dotted.rpartition(".")
    if parent in aliases and parent != "torch":
        return f"{aliases[parent]}.{last}", None
    if aliases.get("torch"):
        return dotted.replace("torch", aliases["torch"], 1), None
    return dotted, (dotted, None, None)


def imports_bound_by(ctx: "FileContext", nodes) -> list[tuple[str, str | None, str | None]]:
    """The top-level imports (module, obj, alias) whose names the given code reads."""
    from tf_migrate.analysis.dataflow import read_names

    read = set().union(*(read_names(node) for node in nodes)) if nodes else set()
    found = []
    for statement in ctx.module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, cst.Import):
                for alias in small.names:
                    dotted = cst.Module([]).code_for_node(alias.name)
                    local = alias.asname.name.value if alias.asname else dotted.split(".")[0]
                    if local in read:
                        found.append((dotted, None, alias.asname.name.value if alias.asname else None))
            elif isinstance(small, cst.ImportFrom) and small.module is not None and not small.relative \
                    and not isinstance(small.names, cst.ImportStar):
                base = cst.Module([]).code_for_node(small.module)
                for alias in small.names:
                    local = alias.asname.name.value if alias.asname else alias.name.value
                    if local in read:
                        found.append((base, alias.name.value, alias.asname.name.value if alias.asname else None))
    return found
