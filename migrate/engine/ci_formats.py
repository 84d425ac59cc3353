"""Output for CI systems: SARIF 2.1.0 (code scanning) and GitHub Actions workflow annotations.

Edits are warnings, refusals notes, errors errors. In SARIF each edit carries the rewrite as a fix:
the changed lines of the file, each hunk given to the edit nearest to it, so applying every fix of
a file gives exactly the migrated file.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Iterable, Sequence
from urllib.parse import quote

from tf_migrate import __version__
from tf_migrate.engine.file import FileResult
from tf_migrate.engine.positions import Columns
from tf_migrate.engine.report import not_understood
from tf_migrate.engine.suppress import UNUSED
from tf_migrate.engine.source import split_lines

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


_POSITION = re.compile(r"\bat line (\d+)(?:, column (\d+))?")


def error_position(error: str) -> tuple[int, int]:
    """(line, column) an error message names (`syntax error at line 3, column 7`), else (1, 0)."""
    match = _POSITION.search(error.splitlines()[0] if error else "")
    if not match:
        return 1, 0
    return max(int(match.group(1)), 1), int(match.group(2) or 0)


def _annotation(kind: str, path: str, line: int, column: int, title: str, message: str) -> str:
    col = f",col={column}" if column else ""
    return (f"::{kind} file={_escape_property(path)},line={max(line, 1)}{col},"
            f"title={_escape_property(title)}::{_escape_data(message)}")


def github_lines(result: FileResult) -> Iterable[str]:
    for error in result.errors:
        line, column = error_position(error)
        yield _annotation("error", result.path, line, column, "tf-migrate error", error.splitlines()[0])
    found = []
    for edit in result.edits:
        found.append((edit.line, edit.column, 0, "warning", edit.code, edit.message))
    for refusal in result.refusals:
        hint = f" (hint: {refusal.hint})" if refusal.hint else ""
        found.append((refusal.line, refusal.column, 1, "notice", f"{refusal.code} refused", refusal.reason + hint))
    for warning in result.warnings:
        found.append((warning.line, warning.column, 2, "warning", warning.code, warning.message))
    column_of = Columns(result.original or "").column
    for item in not_understood(result):
        found.append((item.start_line, column_of(item.start_line), 3, "notice", f"{item.rule} not understood",
                      item.reason))
    for line, column, _, kind, title, message in sorted(found, key=lambda f: f[:3]):
        yield _annotation(kind, result.path, line, column, title, message)


def _hunks(result: FileResult) -> list[tuple[int, int, str]]:
    """(first line, lines replaced, new text) per changed region, lines 1-based."""
    old, new = split_lines(result.original), split_lines(result.migrated)
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    return [(i1 + 1, i2 - i1, "".join(new[j1:j2]))
            for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def _replacement(start: int, count: int, text: str) -> dict[str, Any]:
    region = {"startLine": start, "startColumn": 1, "endLine": start + count, "endColumn": 1}
    return {"deletedRegion": region, "insertedContent": {"text": text}}


def _fixes_by_edit(result: FileResult) -> dict[int, list[dict[str, Any]]]:
    if not result.changed or not result.edits:
        return {}
    by_edit: dict[int, list[dict[str, Any]]] = {}
    for start, count, text in _hunks(result):
        nearest = min(range(len(result.edits)), key=lambda i: abs(result.edits[i].line - start))
        by_edit.setdefault(nearest, []).append(_replacement(start, count, text))
    return by_edit


def _uri(path: str) -> str:
    """A URI reference, as SARIF requires: spaces, non-ASCII and undecodable bytes percent-encoded."""
    return quote(path.replace("\\", "/"), safe="/", errors="surrogateescape")


def _location(path: str, line: int, column: int = 0) -> dict[str, Any]:
    region: dict[str, Any] = {"startLine": max(line, 1)}
    if column:
        region["startColumn"] = column
    return {"physicalLocation": {"artifactLocation": {"uri": _uri(path)}, "region": region}}


def _file_results(result: FileResult) -> Iterable[dict[str, Any]]:
    fixes = _fixes_by_edit(result)
    for i, edit in enumerate(result.edits):
        entry = {"ruleId": edit.code, "level": "warning", "message": {"text": edit.message},
                 "locations": [_location(result.path, edit.line, edit.column)]}
        if i in fixes:
            entry["fixes"] = [{
                "description": {"text": edit.message},
                "artifactChanges": [{"artifactLocation": {"uri": _uri(result.path)},
                                     "replacements": fixes[i]}],
            }]
        yield entry
    for refusal in result.refusals:
        text = f"refused: {refusal.reason}" + (f" (hint: {refusal.hint})" if refusal.hint else "")
        yield {"ruleId": refusal.code, "level": "note", "message": {"text": text},
               "locations": [_location(result.path, refusal.line, refusal.column)]}
    for warning in result.warnings:
        yield {"ruleId": warning.code, "level": "warning", "message": {"text": warning.message},
               "locations": [_location(result.path, warning.line, warning.column)]}
    column_of = Columns(result.original or "").column
    for item in not_understood(result):
        yield {"ruleId": item.rule, "level": "note", "message": {"text": f"not understood: {item.reason}"},
               "locations": [_location(result.path, item.start_line, column_of(item.start_line))]}
    for error in result.errors:
        yield {"ruleId": "TFM000", "level": "error", "message": {"text": error.splitlines()[0]},
               "locations": [_location(result.path, *error_position(error))]}


_OWN_CODES = {UNUSED: ("unused-suppression", "a tf-migrate skip comment that turns off nothing")}


def _rule_descriptors(codes: set[str]) -> list[dict[str, Any]]:
    from tf_migrate.engine.ruleindex import rule_index

    known = {info.code: info for info in rule_index()}
    descriptors = []
    for code in sorted(codes):
        info = known.get(code)
        name, text = _OWN_CODES.get(code, ("error", "file could not be migrated"))
        descriptor = {"id": code, "name": info.name if info else name,
                      "shortDescription": {"text": info.summary if info else text}}
        descriptors.append(descriptor)
    return descriptors


def sarif_document(results: Sequence[FileResult]) -> str:
    entries = [entry for result in results for entry in _file_results(result)]
    run = {
        "tool": {"driver": {"name": "tf-migrate", "version": __version__,
                            "informationUri": "https://pypi.org/project/tf-migrate/",
                            "rules": _rule_descriptors({e["ruleId"] for e in entries})}},
        "results": entries,
    }
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2)
