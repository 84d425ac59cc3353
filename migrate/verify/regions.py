"""The code a migration changed, line by line, so the graphs can be compared outside it.

Module paths are the migrated region for rules that change only the classes their plan names.
TFM201 and TFM401 also change code around those classes (a block's forward moves its norms, the
model's forward drops the position table and adds a final norm), and a free attention function
rewritten in place has no class at all. Their region is the lines the REWRITER changes: each file
where AFTER differs from BEFORE is migrated again from BEFORE, and

- a BEFORE line is in the region when the rewriter's output changes it;
- an AFTER line is in the region when it is one of the rewriter's changed lines, found in AFTER by
  matching AFTER against the rewriter's output. A line that AFTER has and the rewriter did not
  write (an edit by hand) is outside the region, so the node-for-node comparison sees it;
- a line that calls a module-level function the rewriter changed is in the region (export keeps
  only the callers' frames, so the function's operations carry the calling line);
- a module whose attribute named by a keyword the rewriter wrote differs between the two models
  (`nn.TransformerEncoderLayer(..., norm_first=True)`: torch's own forward, no line of the user's
  changes) is in the region as a whole, and so is a module only AFTER has, held by such a keyword
  (`nn.TransformerEncoder(..., norm=nn.LayerNorm(d))`) or by an attribute assigned on such a line.

A graph operation belongs to the region when its innermost line of the user's code does.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from tf_migrate.verify.loading import LoadError, Source
from tf_migrate.verify.ops import Op
from torch import nn


@dataclass
class ChangedCode:
    before: dict[str, set[int]] = field(default_factory=dict)  # resolved file -> changed line numbers
    after: dict[str, set[int]] = field(default_factory=dict)
    functions: set[str] = field(default_factory=set)  # module-level functions the rewriter changed
    keywords: set[str] = field(default_factory=set)  # keyword arguments and attributes set on the lines the rewriter wrote

    def holds(self, op: Op, side: str) -> bool:
        lines = (self.before if side == "before" else self.after).get(op.file, ())
        if op.line in lines:
            return True
        code = op.where.split(": ", 1)[-1]
        return any(re.search(rf"\b{re.escape(name)}\s*\(", code) for name in self.functions)

    def __bool__(self) -> bool:
        return bool(self.before or self.after or self.functions)


def changed_code(before: Source, after: Source, select: list[str]) -> ChangedCode:
    from tf_migrate.engine.config import Config
    from tf_migrate.engine.file import migrate_source
    from tf_migrate.engine.run import UsageError, build_rules

    try:
        rules = build_rules(Config(select=select))
    except UsageError as exc:
        raise LoadError(str(exc)) from exc
    found = ChangedCode()
    pairs = [(before.entry, after.entry)] if before.single else [
        (file, after.root / before.relative(file)) for file in sorted(before.root.rglob("*.py"))]
    for old_file, new_file in pairs:
        if not new_file.is_file():
            continue
        old, new = old_file.read_text(), new_file.read_text()
        if old == new:
            continue
        rewritten = migrate_source(old, str(before.relative(old_file)), rules).migrated
        old_lines, own_lines, new_lines = old.splitlines(), rewritten.splitlines(), new.splitlines()
        changed_old, changed_own = _changed(old_lines, own_lines)
        found.before[str(old_file.resolve())] = changed_old
        found.after[str(new_file.resolve())] = {
            k + 1 for j, k in _equal_lines(own_lines, new_lines) if j + 1 in changed_own}
        found.functions |= _changed_functions(old, rewritten)
        found.keywords |= _keywords(rewritten, changed_own)
    return found


def reconfigured(before: nn.Module, after: nn.Module, keywords: set[str]) -> list[str]:
    """Paths of modules whose attribute named by one of `keywords` differs between the two models,
    and of modules only `after` has whose own name is one of `keywords`."""
    old, new = dict(before.named_modules()), dict(after.named_modules())
    changed = [path for path, module in old.items()
               if path in new and type(new[path]).__name__ == type(module).__name__
               and any(_simple(module, k) and _simple(new[path], k) and getattr(module, k) != getattr(new[path], k)
                       for k in keywords)]
    added = [path for path in new if path and path not in old and path.rsplit(".", 1)[-1] in keywords]
    return changed + added


def _simple(module: nn.Module, name: str) -> bool:
    return isinstance(vars(module).get(name), (bool, int, float, str))


def _keywords(text: str, lines: set[int]) -> set[str]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg and node.value.lineno in lines:
            found.add(node.arg)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.lineno in lines:
            found.add(node.attr)
    return found


def _changed(a: list[str], b: list[str]) -> tuple[set[int], set[int]]:
    """1-based line numbers of `a` and of `b` outside the blocks the two share."""
    in_a, in_b = set(), set()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            in_a.update(range(i1 + 1, i2 + 1))
            in_b.update(range(j1 + 1, j2 + 1))
    return in_a, in_b


def _equal_lines(a: list[str], b: list[str]):
    """(index in a, index in b) of every line the two share."""
    for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        for offset in range(block.size):
            yield block.a + offset, block.b + offset


def _changed_functions(old: str, new: str) -> set[str]:
    def functions(text: str) -> dict[str, str]:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return {}
        return {node.name: ast.dump(node) for node in tree.body
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}

    before, after = functions(old), functions(new)
    return {name for name, dump in before.items() if after.get(name, dump) != dump}
