"""Runs the selected rules over one file and returns what happened, as data.

Nothing here prints or writes: the CLI decides what to do with a `FileResult`.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tf_migrate.plan import ClassPlan
from tf_migrate.engine.rule import Fix, Note, Refusal, Rule
from tf_migrate.engine.source import SourceError, read_source

if TYPE_CHECKING:
    import ast

    from tf_migrate.analysis.project import ProjectIndex


@dataclass(frozen=True)
class Edit:
    code: str
    line: int
    message: str


@dataclass(frozen=True)
class Diagnostic:
    code: str
    line: int
    reason: str
    hint: str = ""


@dataclass
class FileResult:
    path: str
    original: str | None = None
    migrated: str | None = None
    encoding: str = "utf-8"
    edits: list[Edit] = field(default_factory=list)
    refusals: list[Diagnostic] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    plans: list[ClassPlan] = field(default_factory=list)
    notes: list[Edit] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)  # other files the analysis read (the cache keys on them)

    @property
    def changed(self) -> bool:
        return not self.errors and self.migrated is not None and self.migrated != self.original


def has_candidates(text: str, rules: Sequence[Rule]) -> bool:
    return any(word in text for rule in rules for word in rule.triggers)


def migrate_source(text: str, path: str, rules: Sequence[Rule], project: "ProjectIndex | None" = None,
                   source_path: str | None = None) -> FileResult:
    """Run `rules` over one file's text. `project` is the run's whole-tree index (a single-file one
    rooted where `source_path`, else `path`, lies when not given); `source_path` is the file on disk
    when `path` is only how it is displayed."""
    result = FileResult(path, original=text, migrated=text)
    active = [rule for rule in rules if any(word in text for word in rule.triggers)]
    if not active:
        return result
    tree = _python_tree(text)
    if isinstance(tree, str):
        result.errors.append(tree)
        return result
    from tf_migrate.analysis.nn_bases import may_define_modules

    key = source_path or path
    project = project or _single_file_project(key)
    project.add(key, text, tree)
    with project.analysing(key):
        # Every rule works inside nn.Module classes; a base may be one through another project file.
        if may_define_modules(tree) or project.defines_modules(key):
            _run_rules(result, text, path, active, project, key)
        result.depends = sorted(project.reads)
    project.add(key, text, tree)  # other files' questions see this file as it is on disk, in every worker
    return result


def _single_file_project(path: str) -> "ProjectIndex":
    import os

    from tf_migrate.analysis.project import ProjectIndex

    return ProjectIndex.for_files([path]) if os.path.isfile(path) else ProjectIndex(os.path.dirname(os.path.abspath(path)))


def _run_rules(result: FileResult, text: str, path: str, active: Sequence[Rule], project: "ProjectIndex",
               source_path: str) -> None:
    import libcst as cst

    from tf_migrate.engine.context import FileContext
    from tf_migrate.engine.edits import apply_fixes

    try:
        module = cst.parse_module(text)
    except cst.ParserSyntaxError as exc:
        result.errors.append(f"syntax error at line {exc.raw_line}, column {exc.raw_column}: {exc.message}")
        return
    parsed = module
    code = text  # printing a large module costs as much as parsing it: only after a fix
    ctx = None  # shared by rules until one changes the module: its analyses are computed once
    for rule in active:
        try:
            ctx = ctx or FileContext(module, path, code, project, source_path)
            findings = list(rule.check(ctx))
            fixes = [f for f in findings if isinstance(f, Fix)]
            if fixes:
                module = apply_fixes(ctx.module, fixes)
                code = module.code
                project.add(source_path, code)  # later rules' questions see the rewritten file
                ctx = None
        except Exception as exc:  # a rule bug must not damage the file or stop the run
            result.errors.append(f"internal error in {rule.code}: {exc!r}\n{traceback.format_exc()}")
            result.migrated = text
            return
        result.edits.extend(Edit(rule.code, f.line, f.message) for f in fixes)
        result.refusals.extend(
            Diagnostic(rule.code, f.line, f.reason, f.hint) for f in findings if isinstance(f, Refusal))
        result.plans.extend(plan for fix in fixes for plan in fix.plans)
        result.notes.extend(Edit(rule.code, f.line, f.message) for f in findings if isinstance(f, Note))
    result.migrated = code
    if code != text and parsed.code != text:
        # Edits are spliced into libcst's printing of the file: if that is not the file byte for byte
        # (`\r`-only line ends lose the last one), the untouched parts would change too.
        result.errors.append("libcst does not reproduce this file byte for byte (unusual line "
                             "endings?); left untouched")
        result.migrated, result.edits, result.plans = text, [], []
        return
    _check_output(result)


def _python_tree(text: str) -> "ast.Module | str":
    """Python's own parse of `text`, or why it cannot parse it. libcst's native parser must not see
    such files: nesting too deep for Python's parser (`1 + 1 + ...` thousands long) crashes it (SIGSEGV)."""
    if "\0" in text:
        return f"null byte at offset {text.index(chr(0))}: not Python source"
    import ast

    try:
        return ast.parse(text)
    except SyntaxError as exc:
        return f"syntax error at line {exc.lineno}, column {exc.offset}: {exc.msg}"
    except (RecursionError, MemoryError, ValueError) as exc:
        return f"Python cannot parse this file ({type(exc).__name__}: {exc})"


def _check_output(result: FileResult) -> None:
    """Drop every edit of a file whose rewritten text no longer parses or compiles."""
    if result.migrated == result.original:
        return
    import libcst as cst

    try:
        cst.parse_module(result.migrated)
        compile(result.migrated, result.path, "exec")
    except (cst.ParserSyntaxError, SyntaxError, ValueError) as exc:
        result.errors.append(f"the rewrite did not compile, edits dropped: {exc}")
        result.migrated = result.original
        result.edits.clear()
        result.plans.clear()


def migrate_file(path: Path, rules: Sequence[Rule], display: str | None = None) -> FileResult:
    display = display or str(path)
    try:
        source = read_source(path)
    except SourceError as exc:
        return FileResult(display, errors=[str(exc)])
    result = migrate_source(source.text, display, rules)
    result.encoding = source.encoding
    return result
