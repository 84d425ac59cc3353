"""Runs the selected rules over one file and returns what happened, as data.

Nothing here prints or writes: the CLI decides what to do with a `FileResult`.
"""

from __future__ import annotations

import sys
import threading
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tf_migrate.plan import ClassPlan
from tf_migrate.engine import collector, suppress
from tf_migrate.engine.census import ComponentOutcome, reconcile, unsuppressed
from tf_migrate.engine.lines import original_lines, relabel
from tf_migrate.engine.rule import Fix, Note, Refusal, Rule
from tf_migrate.engine.source import SourceError, Stamp, read_source, split_lines

if TYPE_CHECKING:
    import ast

    from tf_migrate.analysis.project import ProjectIndex


@dataclass(frozen=True)
class Edit:
    code: str
    line: int  # of the input file, also when an earlier rule changed the text first
    message: str
    column: int = 0  # 1-based: where the code on that line starts; 0 unknown


@dataclass(frozen=True)
class Diagnostic:
    code: str
    line: int
    reason: str
    hint: str = ""
    column: int = 0


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
    warnings: list[Edit] = field(default_factory=list)  # about the file's own comments (suppressions)
    components: list[ComponentOutcome] = field(default_factory=list)
    # Fixes and refusals that no census component accounts for (message: "fix" or "refusal").
    outside: list[Edit] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)  # other files the analysis read (the cache keys on them)
    skipped: str = ""  # why the file was not looked at (a FIFO named *.py): not an error
    stamp: Stamp | None = None  # what was read, for the check before --write replaces the file

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
    with collector.paused():
        return _migrate_source(text, path, rules, project, source_path)


def _migrate_source(text: str, path: str, rules: Sequence[Rule], project: "ProjectIndex | None",
                    source_path: str | None) -> FileResult:
    result = FileResult(path, original=text, migrated=text)
    active = [rule for rule in rules if any(word in text for word in rule.triggers)]
    if not active:  # no rule looks at it, but a file Python cannot parse is still an error
        error = syntax_error(text)
        if error:
            result.errors.append(error)
        return result
    tree = _python_tree(text)  # under the caller's recursion limit: it bounds what libcst sees
    if isinstance(tree, str):
        result.errors.append(tree)
        return result
    active = suppress.without_skipped_file(text, active)
    if not active:
        return result
    from tf_migrate.analysis.nn_bases import may_define_modules

    key = source_path or path
    project = project or _single_file_project(key)
    project.add(key, text, tree)
    with project.analysing(key):
        # Every rule works inside nn.Module classes; a base may be one through another project file.
        if not (may_define_modules(tree) or project.defines_modules(key)):
            active = [rule for rule in active if (rule.free_functions and _function_naming(tree, rule.triggers, text))
                      or _calling(tree, rule.outside_modules, text)]
        if active:
            _with_deep_stack(_run_rules, result, text, path, active, project, key)
        result.depends = sorted(project.reads)
    project.add(key, text, tree)  # other files' questions see this file as it is on disk, in every worker
    return result


# libcst's visitors, metadata and printer recurse a few frames per level of nesting: a valid
# 400-term sum or 500-link call chain exceeds Python's default limit of 1000 frames. The rules
# run in a thread whose stack and recursion limit hold that; the depth itself stays bounded by
# Python's parser, which every file passes first with the usual limit.
_STACK_BYTES = 512 * 1024 * 1024
_RECURSION_LIMIT = 30_000


def _with_deep_stack(function, *args):
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(function(*args))
        except BaseException as exc:  # re-raised in the caller's thread
            outcome.append(exc)

    old_stack, old_limit = threading.stack_size(_STACK_BYTES), sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, _RECURSION_LIMIT))
    try:
        thread = threading.Thread(target=target, name="tf-migrate rules")
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old_stack)
        sys.setrecursionlimit(old_limit)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _function_naming(tree, words: Sequence[str], text: str) -> bool:
    """Whether a top-level function of the file reads a name or attribute holding one of `words`
    (`torch.softmax(...)`, `w.softmax(...)`): a cheap look for work a free-functions rule can do.
    A function whose lines (`tree` is the parse of `text`) spell none of the words holds no such
    name and is not walked; a non-ASCII one is (Python normalises identifiers: NFKC)."""
    import ast
    import re

    starts = [0] + [match.end() for match in re.finditer(r"\r\n|\r|\n", text)]  # Python's line ends
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([decorator.lineno for decorator in node.decorator_list] + [node.lineno])
            last = node.end_lineno or len(starts)
            lines = text[starts[first - 1]:starts[last] if last < len(starts) else len(text)]
            if lines.isascii() and not any(word in lines for word in words):
                continue
            for inner in ast.walk(node):
                name = inner.id if isinstance(inner, ast.Name) else inner.attr if isinstance(inner, ast.Attribute) else ""
                if any(word in name for word in words):
                    return True
    return False


def _calling(tree, names: Sequence[str], text: str) -> bool:
    """Whether the file (`tree` is the parse of `text`) calls a function or method named one of
    `names` (`torch.sin(x)`, `x.sin_()`): a name in a comment, a string or `asin(` is no call.
    Only a file whose text spells a name is walked, or a non-ASCII one (NFKC identifiers)."""
    if not names or (text.isascii() and not any(name in text for name in names)):
        return False
    import ast

    for node in ast.walk(tree):
        if node.__class__ is ast.Call:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in names:
                return True
    return False


def _single_file_project(path: str) -> "ProjectIndex":
    import os

    from tf_migrate.analysis.project import ProjectIndex

    return ProjectIndex.for_files([path]) if os.path.isfile(path) else ProjectIndex(os.path.dirname(os.path.abspath(path)))


def _run_rules(result: FileResult, text: str, path: str, active: Sequence[Rule], project: "ProjectIndex",
               source_path: str) -> None:
    import libcst as cst

    from tf_migrate.engine.context import FileContext
    from tf_migrate.engine.edits import apply_fixes
    from tf_migrate.engine.positions import Columns
    from tf_migrate.engine.printed import Printer

    try:
        module = cst.parse_module(text)
    except cst.ParserSyntaxError as exc:
        result.errors.append(_form_feed_error(text) or
                             f"syntax error at line {exc.raw_line}, column {exc.raw_column}: {exc.message}")
        return
    parsed = module
    code = text  # printing a large module costs as much as parsing it: only after a fix
    printer = Printer()  # prints each version, reusing the top-level statements a fix left alone
    ctx = None  # shared by rules until one changes the module: its analyses are computed once
    positions = None  # of the rewritten module's nodes, from the printing that gave `code`
    column = Columns(text).column  # lines come from engine/lines.py, columns from the input's text
    earlier = None  # the index of the module a fix rewrote: the next one copies unchanged subtrees
    used_skips: set[int] = set()  # skip comments the current rule used, in the lines it saw
    skip_lines: set[int] = set()  # the same, in the input's lines
    for rule in active:
        seen = code  # the text this rule reads: lines of its findings count there
        try:
            ctx = ctx or FileContext(module, path, code, project, source_path, positions, earlier, printer)
            findings = list(rule.check(ctx))
            components = unsuppressed(list(rule.census(ctx)), ctx.skips)
            used_skips.update(ctx.used_skips)  # lines of `seen`: mapped below
            fixes = [f for f in findings if isinstance(f, Fix)]
            if fixes:
                module = apply_fixes(ctx.module, fixes, ctx.parents, ctx.index, printer.code)
                earlier = ctx.index
                code, positions = printer(module)
                project.add(source_path, code)  # later rules' questions see the rewritten file
                ctx.release()
                ctx = None
        except Exception as exc:  # a rule bug must not damage the file or stop the run
            result.errors.append(f"internal error in {rule.code}: {exc!r}\n{traceback.format_exc()}")
            result.migrated = text
            return
        line_of = original_lines(text, seen)  # reports name the lines of the file as written
        skip_lines.update(line_of(n) for n in used_skips)
        used_skips.clear()
        result.edits.extend(Edit(rule.code, line_of(f.line), relabel(f.message, line_of),
                                 column(line_of(f.line))) for f in fixes)
        result.refusals.extend(Diagnostic(rule.code, line_of(f.line), relabel(f.reason, line_of), f.hint,
                                          column(line_of(f.line)))
                               for f in findings if isinstance(f, Refusal))
        result.plans.extend(plan for fix in fixes for plan in fix.plans)
        result.notes.extend(Edit(rule.code, line_of(f.line), relabel(f.message, line_of),
                                 column(line_of(f.line))) for f in findings if isinstance(f, Note))
        outcomes, outside = reconcile(components, findings)
        result.components.extend(
            replace(c, start_line=line_of(c.start_line), end_line=line_of(c.end_line),
                    reason=relabel(c.reason, line_of)) for c in outcomes)
        result.outside.extend(Edit(rule.code, line_of(f.line), "fix" if isinstance(f, Fix) else "refusal",
                                   column(line_of(f.line)))
                              for f in outside)
    if ctx is not None:
        ctx.release()
    result.warnings.extend(Edit(suppress.UNUSED, line, message, column(line))
                           for line, message in suppress.unused(text, skip_lines, active))
    result.migrated = code
    if code != text and printer.code(parsed) != text:
        # Edits are spliced into libcst's printing of the file: if that is not the file byte for byte
        # (`\r`-only line ends lose the last one), the untouched parts would change too.
        result.errors.append(_form_feed_error(text) or "libcst does not reproduce this file byte "
                             "for byte (unusual line endings?); left untouched")
        result.migrated, result.edits, result.plans = text, [], []
        _edits_dropped(result)
        return
    result.migrated = _file_newlines(text, code)
    _check_output(result)


def _form_feed_error(text: str) -> str | None:
    """A form feed before code on a line (old editors' page breaks) is valid Python that libcst
    cannot print back: name it instead of blaming the file's syntax or line ends."""
    for number, line in enumerate(split_lines(text), 1):
        indent = line[:len(line) - len(line.lstrip(" \t\f"))]
        if "\f" in indent and line.strip(" \t\f\r\n"):
            return (f"form feed in indentation at line {number}: libcst does not reproduce it byte "
                    "for byte; left untouched (remove the form feed to migrate this file)")
    return None


def _file_newlines(original: str, code: str) -> str:
    """Code a rule inserts carries `\\n` inside multi-line strings; a file that ends every line with
    `\\r\\n` gets them too."""
    if "\r\n" in original and "\n" not in original.replace("\r\n", ""):
        return code.replace("\r\n", "\n").replace("\n", "\r\n")
    return code


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


def syntax_error(text: str) -> str | None:
    """Why Python cannot compile `text`, or None. For files no rule looks at: the symbol table pass
    parses the file without building Python objects for the tree, about twice as fast as `ast`."""
    if "\0" in text:
        return f"null byte at offset {text.index(chr(0))}: not Python source"
    import symtable

    try:
        symtable.symtable(text, "<file>", "exec")
    except SyntaxError as exc:
        return f"syntax error at line {exc.lineno}, column {exc.offset}: {exc.msg}"
    except (RecursionError, MemoryError, ValueError) as exc:
        return f"Python cannot parse this file ({type(exc).__name__}: {exc})"
    return None


def _check_output(result: FileResult) -> None:
    """Drop every edit of a file whose rewritten text no longer compiles. The text is libcst's
    printing of the tree it parsed, as the rules edited it; Python's compiler is the check (a
    second libcst parse of the whole text, done here before, cost as much as the file's first)."""
    if result.migrated == result.original:
        return
    try:
        compile(result.migrated, result.path, "exec")
    except (SyntaxError, ValueError) as exc:
        result.errors.append(f"the rewrite did not compile, edits dropped: {exc}")
        result.migrated = result.original
        result.edits.clear()
        result.plans.clear()
        _edits_dropped(result)


def _edits_dropped(result: FileResult) -> None:
    """A component whose rewrite was dropped is not migrated: it is refused, with the error."""
    reason = result.errors[-1].splitlines()[0]
    result.components = [c if c.outcome != "migrated" else replace(c, outcome="refused", reason=reason)
                         for c in result.components]


def migrate_file(path: Path, rules: Sequence[Rule], display: str | None = None) -> FileResult:
    display = display or str(path)
    try:
        source = read_source(path)
    except SourceError as exc:
        return FileResult(display, errors=[str(exc)])
    result = migrate_source(source.text, display, rules)
    result.encoding = source.encoding
    return result
