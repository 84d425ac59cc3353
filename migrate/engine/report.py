"""Turning results into text, JSON and unified diffs."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections import Counter
from typing import Iterable, Sequence, TextIO

from tf_migrate.engine.census import OUTCOMES, ComponentOutcome
from tf_migrate.engine.file import FileResult
from tf_migrate.engine.positions import Columns
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
    if result.skipped:
        yield f"{_paint(result.path, 'path', color)}: {result.skipped}"
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
    if result.components:
        column_of = Columns(result.original or "").column
        for item in not_understood(result):
            findings.append((item.start_line, column_of(item.start_line), 4,
                             f"{_paint(item.rule, 'code', color)} {_paint('not understood', 'note', color)}: "
                             f"{item.reason}"))
    for line, column, _, text in sorted(findings, key=lambda f: f[:3]):
        yield f"{_where(result, line, column, color)} {text}"


def not_understood(result: FileResult) -> list[ComponentOutcome]:
    return sorted((c for c in result.components if c.outcome == "not-understood"),
                  key=lambda c: c.start_line)


def census_summary(results: Sequence[FileResult]) -> dict[str, dict[str, int]]:
    """Per rule: components found, then how many ended in each outcome, and the fixes and
    refusals no component accounts for (`outside-census`)."""
    table: dict[str, dict[str, int]] = {}
    for result in results:
        for component in result.components:
            row = table.setdefault(component.rule, _row())
            row["found"] += 1
            row[component.outcome] += 1
        for item in result.outside:
            table.setdefault(item.code, _row())["outside-census"] += 1
    return dict(sorted(table.items()))


def _row() -> dict[str, int]:
    return {"found": 0, **{outcome: 0 for outcome in OUTCOMES}, "outside-census": 0}


def census_table(results: Sequence[FileResult]) -> list[str]:
    """The per-rule table (empty when the census found nothing and nothing fell outside it)."""
    table = census_summary(results)
    if not table:
        return []
    columns = ["found", *OUTCOMES, "outside-census"]
    headers = ["rule", "found", "migrated", "refused", "already modern", "not understood",
               "outside census"]
    rows = [[code, *(str(counts[c]) for c in columns)] for code, counts in table.items()]
    if len(rows) > 1:
        rows.append(["total", *(str(sum(t[c] for t in table.values())) for c in columns)])
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                      enumerate(zip(row, widths))) for row in [headers, *rows]]


# Where a reason names a line ("line 12", "lines 3-5", "line(s) 4, 9", "model.py:71"): only those
# numbers fold, so `linear1`, `w_2` or a Conv2d's `3` keep telling reasons apart.
_LINE_NUMBERS = re.compile(r"\b(lines?(?:\(s\))?) \d+(?:(?:-|, | and )\d+)*|(\.py):\d+|(, column) \d+")
_LEADING_LINE = re.compile(r"line \d+: ")


def fold_lines(reason: str) -> str:
    """`reason` with its line numbers as N, and without the `line N: ` every refusal starts with."""
    reason = _LEADING_LINE.sub("", reason, count=1) if _LEADING_LINE.match(reason) else reason
    return _LINE_NUMBERS.sub(lambda m: f"{m.group(1) or m.group(2) or m.group(3)}"
                                       f"{':' if m.group(2) else ' '}N", reason)


def reason_counts(results: Sequence[FileResult]) -> list[tuple[int, str, str, str]]:
    """(count, rule, outcome, reason) for every outcome but migrated, and for each refusal outside
    the census, line numbers folded."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for result in results:
        for c in result.components:
            if c.outcome != "migrated":
                counts[(c.rule, c.outcome, fold_lines(c.reason))] += 1
        for item in result.outside:  # refusals no component accounts for are reasons too
            refusal = next((r for r in result.refusals if (r.code, r.line) == (item.code, item.line)), None)
            if item.message == "refusal" and refusal is not None:
                counts[(item.code, "refused outside census", fold_lines(refusal.reason))] += 1
    return sorted(((n, *key) for key, n in counts.items()), key=lambda t: (-t[0], t[1:]))


def statistics(results: Sequence[FileResult]) -> list[str]:
    """`--statistics`: the table, then each outcome's reasons with their counts."""
    lines = census_table(results)
    reasons = reason_counts(results)
    if reasons:
        lines.append("")
        width = len(str(reasons[0][0]))
        lines.extend(f"{n:>{width}}  {rule} {outcome}: {reason}" for n, rule, outcome, reason in reasons)
    return lines


def statistics_document(results: Sequence[FileResult]) -> str:
    """`--statistics --format json`: the per-rule table and the counted reasons, as data."""
    return json.dumps({"summary": census_summary(results),
                       "reasons": [{"count": n, "rule": rule, "outcome": outcome, "reason": reason}
                                   for n, rule, outcome, reason in reason_counts(results)]}, indent=2)


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
        "edits": [{"code": e.code, "line": e.line, "column": e.column, "message": e.message}
                  for e in r.edits],
        "refusals": [{"code": d.code, "line": d.line, "column": d.column, "reason": d.reason,
                      "hint": d.hint} for d in r.refusals],
        "errors": [e.splitlines()[0] for e in r.errors],
        "notes": [{"code": n.code, "line": n.line, "column": n.column, "message": n.message}
                  for n in r.notes],
        "warnings": [{"code": w.code, "line": w.line, "column": w.column, "message": w.message}
                     for w in r.warnings],
        **({"skipped": r.skipped} if r.skipped else {}),
    } for r in results]
    components = [{"rule": c.rule, "kind": c.kind, "file": r.path, "class": c.cls,
                   "lines": [c.start_line, c.end_line], "outcome": c.outcome, "reason": c.reason}
                  for r in results for c in r.components]
    plans = plan_document(p for r in results for p in r.plans)
    return json.dumps({"files": files, "plan": plans, "components": components,
                       "summary": census_summary(results)}, indent=2)
