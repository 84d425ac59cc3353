"""Turning results into text, JSON and unified diffs."""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from typing import Iterable, Sequence

from tf_migrate.engine.census import OUTCOMES, ComponentOutcome
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
    for item in not_understood(result):
        yield f"{result.path}:{item.start_line}: {item.rule} not understood: {item.reason}"


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


_NUMBERS = re.compile(r"\d+")


def reason_counts(results: Sequence[FileResult]) -> list[tuple[int, str, str, str]]:
    """(count, rule, outcome, reason) for every outcome but migrated, line numbers folded."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for result in results:
        for c in result.components:
            if c.outcome != "migrated":
                reason = _NUMBERS.sub("N", c.reason.removeprefix(f"line {c.start_line}: "))
                counts[(c.rule, c.outcome, reason)] += 1
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
    components = [{"rule": c.rule, "kind": c.kind, "file": r.path, "class": c.cls,
                   "lines": [c.start_line, c.end_line], "outcome": c.outcome, "reason": c.reason}
                  for r in results for c in r.components]
    plans = plan_document(p for r in results for p in r.plans)
    return json.dumps({"files": files, "plan": plans, "components": components,
                       "summary": census_summary(results)}, indent=2)
