"""Turning results into text, JSON and unified diffs."""

from __future__ import annotations

import difflib
import json
from typing import Iterable, Sequence

from tf_migrate.engine.file import FileResult
from tf_migrate.plan import plan_document
from tf_migrate.engine.source import split_lines


def diff(result: FileResult) -> str:
    if not result.changed:
        return ""
    lines = difflib.unified_diff(split_lines(result.original), split_lines(result.migrated),
                                 fromfile=f"a/{_relative(result.path)}", tofile=f"b/{_relative(result.path)}")
    # A last line without its newline gets the marker patch and git expect, not glued to the next.
    return "".join(line if line.endswith(("\n", "\r")) else line + "\n\\ No newline at end of file\n"
                   for line in lines)


def _relative(path: str) -> str:
    """`/tmp/x.py` appears as `a/tmp/x.py` (as git writes it), not `a//tmp/x.py`."""
    return path.lstrip("/")


def text_lines(result: FileResult) -> Iterable[str]:
    if result.skipped:
        yield f"{result.path}: {result.skipped}"
    for error in result.errors:
        yield f"{result.path}: error: {error.splitlines()[0]}"
    for edit in sorted(result.edits, key=lambda e: e.line):
        yield f"{result.path}:{edit.line}: {edit.code} {edit.message}"
    for refusal in sorted(result.refusals, key=lambda r: r.line):
        hint = f" (hint: {refusal.hint})" if refusal.hint else ""
        yield f"{result.path}:{refusal.line}: {refusal.code} refused: {refusal.reason}{hint}"
    for note in sorted(result.notes, key=lambda n: n.line):
        yield f"{result.path}:{note.line}: {note.code} note: {note.message}"


def summary(results: Sequence[FileResult], wrote: bool) -> str:
    changed = sum(r.changed for r in results)
    refusals = sum(len(r.refusals) for r in results)
    errors = sum(bool(r.errors) for r in results)
    skipped = sum(bool(r.skipped) for r in results)
    verb = "changed" if wrote else "would change"
    return (f"{changed} file{'s' if changed != 1 else ''} {verb}, {len(results) - changed - errors - skipped} "
            f"unchanged, {refusals} refusal{'s' if refusals != 1 else ''}, {errors} "
            f"error{'s' if errors != 1 else ''}" + (f", {skipped} skipped" if skipped else ""))


def json_document(results: Sequence[FileResult]) -> str:
    files = [{
        "path": r.path,
        "changed": r.changed,
        "edits": [{"code": e.code, "line": e.line, "message": e.message} for e in r.edits],
        "refusals": [{"code": d.code, "line": d.line, "reason": d.reason, "hint": d.hint}
                     for d in r.refusals],
        "errors": [e.splitlines()[0] for e in r.errors],
        **({"skipped": r.skipped} if r.skipped else {}),
        "notes": [{"code": n.code, "line": n.line, "message": n.message} for n in r.notes],
    } for r in results]
    plans = plan_document(p for r in results for p in r.plans)
    return json.dumps({"files": files, "plan": plans}, indent=2)
