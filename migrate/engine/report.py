"""Turning results into text, JSON and unified diffs."""

from __future__ import annotations

import difflib
import json
import os
from typing import Iterable, Sequence, TextIO

from tf_migrate.engine.file import FileResult
from tf_migrate.plan import plan_document
from tf_migrate.engine.source import split_lines


def diff(result: FileResult) -> str:
    if not result.changed:
        return ""
    lines = difflib.unified_diff(split_lines(result.original), split_lines(result.migrated),
                                 fromfile=f"a/{result.path}", tofile=f"b/{result.path}")
    # A last line without its newline gets the marker patch and git expect, not glued to the next.
    return "".join(line if line.endswith(("\n", "\r")) else line + "\n\\ No newline at end of file\n"
                   for line in lines)


def path_key(path: str) -> tuple[str, ...]:
    """Files sorted as ruff sorts them: by path, folder by folder."""
    return tuple(path.replace("\\", "/").split("/"))


def use_color(stream: TextIO) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (https://no-color.org); FORCE_COLOR forces it."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


_STYLES = {"path": "1", "error": "1;31", "code": "1;31", "refused": "33", "note": "36", "warning": "35",
           "dim": "2"}


def _paint(text: str, style: str, color: bool) -> str:
    return f"\x1b[{_STYLES[style]}m{text}\x1b[0m" if color else text


def _where(result: FileResult, line: int, column: int, color: bool) -> str:
    place = f"{line}:{column}" if column else f"{line}"
    return f"{_paint(result.path, 'path', color)}{_paint(':', 'dim', color)}{place}{_paint(':', 'dim', color)}"


def text_lines(result: FileResult, color: bool = False) -> Iterable[str]:
    """Errors first, then every finding by line and column: `path:line:col: CODE message`."""
    for error in result.errors:
        yield f"{_paint(result.path, 'path', color)}: {_paint('error', 'error', color)}: {error.splitlines()[0]}"
    findings: list[tuple[int, int, int, str]] = []
    for edit in result.edits:
        findings.append((edit.line, edit.column, 0, f"{_paint(edit.code, 'code', color)} {edit.message}"))
    for refusal in result.refusals:
        hint = f" (hint: {refusal.hint})" if refusal.hint else ""
        findings.append((refusal.line, refusal.column, 1, f"{_paint(refusal.code, 'code', color)} "
                                                          f"{_paint('refused', 'refused', color)}: {refusal.reason}{hint}"))
    for note in result.notes:
        findings.append((note.line, note.column, 2, f"{_paint(note.code, 'code', color)} "
                                                    f"{_paint('note', 'note', color)}: {note.message}"))
    for warning in result.warnings:
        findings.append((warning.line, warning.column, 3, f"{_paint(warning.code, 'code', color)} "
                                                          f"{_paint('warning', 'warning', color)}: {warning.message}"))
    for line, column, _, text in sorted(findings, key=lambda f: f[:3]):
        yield f"{_where(result, line, column, color)} {text}"


def summary(results: Sequence[FileResult], wrote: bool) -> str:
    changed = sum(r.changed for r in results)
    refusals = sum(len(r.refusals) for r in results)
    errors = sum(bool(r.errors) for r in results)
    verb = "changed" if wrote else "would change"
    return (f"{changed} file{'s' if changed != 1 else ''} {verb}, {len(results) - changed - errors} "
            f"unchanged, {refusals} refusal{'s' if refusals != 1 else ''}, {errors} "
            f"error{'s' if errors != 1 else ''}")


def json_document(results: Sequence[FileResult]) -> str:
    files = [{
        "path": r.path,
        "changed": r.changed,
        "edits": [{"code": e.code, "line": e.line, "column": e.column, "message": e.message}
                  for e in r.edits],
        "refusals": [{"code": d.code, "line": d.line, "column": d.column, "reason": d.reason,
                      "hint": d.hint} for d in r.refusals],
        "errors": [e.splitlines()[0] for e in r.errors],
        "notes": [{"code": n.code, "line": n.line, "column": n.column, "message": n.message}
                  for n in r.notes],
        "warnings": [{"code": w.code, "line": w.line, "column": w.column, "message": w.message}
                     for w in r.warnings],
    } for r in results]
    plans = plan_document(p for r in results for p in r.plans)
    return json.dumps({"files": files, "plan": plans}, indent=2)
