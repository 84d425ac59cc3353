"""The real-code ground truth parses, and the scorer skips cleanly without a corpus (no network here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "realcode.py"
MANIFESTS = sorted((ROOT / "benchmarks" / "realcode" / "manifest").glob("*.md"))


def _realcode():
    spec = importlib.util.spec_from_file_location("realcode_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


realcode = _realcode()


def test_there_are_manifests():
    assert MANIFESTS


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_manifest_parses(path):
    m = realcode.parse_manifest(path)
    assert m.folder == path.stem
    assert len(m.commit) == 40
    assert m.paths
    ids = [r.id for r in m.rows]
    assert len(ids) == len(set(ids))
    for row in m.rows:
        assert row.rule in realcode.RULES
        assert row.verdict in realcode.VERDICTS
        assert all(1 <= a <= b for a, b in row.lines)
        assert not Path(row.file).is_absolute()
    if m.dropped:
        assert not m.rows
    if m.build:
        assert m.build["entry"] and m.build["build"]


def _write(tmp_path, body: str) -> Path:
    path = tmp_path / "a__b.md"
    path.write_text(body)
    return path


HEADER = "# a/b\n\n- commit: " + "0" * 40 + "\n- paths: x.py\n- style: s\n- status: studied\n\n"
TABLE = "| id | rule | file | lines | symbol | verdict | reason |\n|---|---|---|---|---|---|---|\n"


@pytest.mark.parametrize("row, message", [
    ("| a1 | TFM999 | x.py | 1-2 | C | migrate | r |", "unknown rule"),
    ("| a1 | TFM101 | x.py | 1-2 | C | maybe | r |", "verdict"),
    ("| a1 | TFM101 | x.py | 5-2 | C | migrate | r |", "bad line range"),
    ("| a1 | TFM101 | x.py | 1-2 | C | migrate | r | extra |", "cells"),
    ("| a1 | TFM101 | /x.py | 1-2 | C | migrate | r |", "relative"),
])
def test_bad_rows_are_rejected(tmp_path, row, message):
    with pytest.raises(realcode.ManifestError, match=message):
        realcode.parse_manifest(_write(tmp_path, HEADER + TABLE + row + "\n"))


def test_duplicate_ids_and_dropped_tables_are_rejected(tmp_path):
    row = "| a1 | TFM101 | x.py | 1-2 | C | migrate | r |\n"
    with pytest.raises(realcode.ManifestError, match="duplicate"):
        realcode.parse_manifest(_write(tmp_path, HEADER + TABLE + row + row))
    dropped = HEADER.replace("status: studied", "status: dropped: no code")
    with pytest.raises(realcode.ManifestError, match="dropped"):
        realcode.parse_manifest(_write(tmp_path, dropped + TABLE + row))
    assert realcode.parse_manifest(_write(tmp_path, dropped)).dropped


def test_scores():
    s = realcode.score
    assert s("migrate", "migrated") == "migrated"
    assert s("refuse", "migrated") == "WRONG"
    assert s("refuse", "refused") == "refused (expected)"
    assert s("migrate", "refused") == "refused (should migrate)"
    assert s("modern", None) == "modern ok"
    assert s("lookalike", None) == "lookalike ok"
    assert s("lookalike", "refused") == "noise"
    assert s("migrate", None) == "silent"
    assert s("refuse", "not-understood") == "not understood"


def test_matching_by_range_then_symbol(tmp_path):
    (tmp_path / "m.py").write_text("class A:\n    def f(self):\n        pass\n\n\nclass B:\n    pass\n")
    rows = [realcode.Row("r1", "TFM101", "m.py", [(3, 3)], "A", "migrate", "x"),
            realcode.Row("r2", "TFM201", "m.py", [(7, 7)], "B", "migrate", "x")]
    doc = {"files": [{"path": str(tmp_path / "m.py"), "errors": [], "notes": [],
                      "edits": [{"code": "TFM101", "line": 3, "message": "m"},
                                {"code": "TFM201", "line": 6, "message": "class line"},
                                {"code": "TFM301", "line": 2, "message": "stray"}],
                      "refusals": []}]}
    items, errors = realcode.tool_items(doc, tmp_path)
    found = realcode.match(rows, items, tmp_path)
    assert [it.start for it in found["r1"]] == [3]
    assert [it.start for it in found["r2"]] == [6]
    assert [it.rule for it in items if not it.matched] == ["TFM301"]


def test_census_components_take_precedence(tmp_path):
    doc = {"files": [{"path": str(tmp_path / "m.py"), "edits": [{"code": "TFM101", "line": 3, "message": "e"}],
                      "refusals": [], "notes": [], "errors": []}],
           "components": [{"rule": "TFM101", "kind": "attention", "file": str(tmp_path / "m.py"),
                           "class": "A", "lines": [2, 9], "outcome": "not-understood", "reason": "why"}]}
    items, _ = realcode.tool_items(doc, tmp_path)
    assert [(it.outcome, it.start, it.end) for it in items] == [("not-understood", 2, 9)]


def test_census_share_counts_every_component_found_matched_or_not(tmp_path):
    def component(outcome, line):
        return {"rule": "TFM101", "kind": "attention", "file": str(tmp_path / "m.py"), "class": "A",
                "lines": [line, line + 1], "outcome": outcome, "reason": "r"}

    doc = {"files": [{"path": str(tmp_path / "m.py"), "edits": [{"code": "TFM101", "line": 40, "message": "e"}],
                      "refusals": [], "notes": [], "errors": []}],
           "components": [component("migrated", 2), component("not-understood", 9),
                          component("not-understood", 20), component("refused", 30)]}
    items, _ = realcode.tool_items(doc, tmp_path)
    counts = realcode.census_counts(items)
    assert counts == {"found": 4, "migrated": 1, "refused": 1, "modern": 0, "not-understood": 2}
    line = realcode.census_share([{"census": counts}, {"census": dict(counts, found=0, **{"not-understood": 0,
                                                                                          "migrated": 0,
                                                                                          "refused": 0})}])
    assert line == "Census: 4 components found: 1 migrated, 1 refused, 0 modern, not understood 2/4 (50 %)."
    text = realcode.report([{"repo": "o/r", "results": [], "numeric": None, "errors": [], "unlisted": [],
                             "census": counts}], "t", "abc")
    assert "\nCensus: 4 components found" in text
    # a document of edits only (no census) counts nothing
    old, _ = realcode.tool_items({"files": doc["files"]}, tmp_path)
    assert realcode.census_counts(old)["found"] == 0


def test_absent_corpus_exits_zero(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "absent" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1


def test_a_tool_that_does_not_run_stops_the_benchmark(tmp_path):
    """A broken install must not be scored as 164 silent components."""
    corpus = tmp_path / "corpus"
    (corpus / "karpathy__minGPT").mkdir(parents=True)
    out = tmp_path / "out.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(corpus), "--out", str(out),
                           "--tf-migrate", f"{sys.executable} -m no_such_module_here"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "does not run" in proc.stderr
    assert not out.exists()
