"""The census: every legacy component the broad detectors find ends with exactly one outcome.

Goldens: `fixtures/<rule>/<case>.census.py` with `<case>.census.json` beside it, the expected
components (`--regen-goldens` rewrites them: review the diff). Look-alikes in those files must
produce no component.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import MODELS, manifest, rule_folders, rule_for_folder
from tf_migrate.engine.census import OUTCOMES, reconcile, unsuppressed
from tf_migrate.engine.config import Config
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import all_rules
from tf_migrate.engine.report import census_summary, json_document, statistics
from tf_migrate.engine.rule import Component, Fix, Note, Refusal
from tf_migrate.engine.run import build_rules

CASES = sorted(p for folder in rule_folders() for p in folder.glob("*.census.py"))
MODEL_FILES = sorted(p for p in MODELS.glob("*.py"))


def _as_json(result) -> list[dict]:
    return [{"rule": c.rule, "kind": c.kind, "class": c.cls, "lines": [c.start_line, c.end_line],
             "outcome": c.outcome, "reason": c.reason} for c in result.components]


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_census_golden(case: Path, regen: bool) -> None:
    rule = rule_for_folder(case.parent.name)
    result = migrate_source(case.read_text(), f"{case.parent.name}/{case.name}", [rule()])
    assert not result.errors, result.errors
    golden = case.with_name(case.name.replace(".census.py", ".census.json"))
    found = _as_json(result)
    if regen:
        golden.write_text(json.dumps(found, indent=2) + "\n")
    assert golden.exists(), f"missing {golden.name} (run pytest --regen-goldens and review)"
    assert found == json.loads(golden.read_text())
    assert not result.outside, f"findings no component accounts for: {result.outside}"


def test_every_rule_has_census_cases_and_each_golden_has_its_case() -> None:
    for folder in rule_folders():
        assert list(folder.glob("*.census.py")), f"{folder.name}: no census case"
        for golden in folder.glob("*.census.json"):
            assert golden.with_name(golden.name.replace(".census.json", ".census.py")).exists()


@pytest.mark.parametrize("model", MODEL_FILES, ids=lambda p: p.stem)
def test_every_component_of_the_models_has_an_outcome(model: Path) -> None:
    result = migrate_source(model.read_text(), model.name, [r() for r in all_rules()])
    assert not result.errors
    assert all(c.outcome in OUTCOMES for c in result.components)
    assert not [c for c in result.components if c.outcome == "not-understood"], result.components
    # the census is at least as broad as the manifest: a rule expected to act finds a component
    for code, expected in manifest().get(model.stem, {}).get("expect", {}).items():
        if expected in ("apply", "refuse", "apply-or-refuse"):
            assert any(c.rule == code for c in result.components), f"{model.stem}: no {code} component"


def _component(start: int, end: int, scopes=(), anchors=()) -> Component:
    return Component("TFM999", "thing", "C", start, end, "a thing", tuple(anchors), tuple(scopes))


def test_reconcile_gives_each_component_one_outcome() -> None:
    fix, refusal, note = Fix(5, "done", {}), Refusal(20, "because"), Note(31, "modern already")
    components = [_component(4, 6), _component(18, 22), _component(30, 32), _component(40, 41)]
    outcomes, outside = reconcile(components, [fix, refusal, note])
    assert [o.outcome for o in outcomes] == ["migrated", "refused", "modern", "not-understood"]
    assert outcomes[1].reason == "line 20: because"
    assert outcomes[3].reason == "a thing (lines 40-41); the matcher did not recognise it and gave no reason"
    assert outside == []


def test_reconcile_falls_back_to_the_enclosing_function_then_counts_the_rest() -> None:
    returned = Refusal(12, "probabilities returned")
    elsewhere = Refusal(90, "unrelated")
    outcomes, outside = reconcile([_component(4, 8, scopes=[(1, 14)])], [returned, elsewhere])
    assert outcomes[0].outcome == "refused" and "returned" in outcomes[0].reason
    assert outside == [elsewhere]
    # a finding a component claimed by its lines does not also serve another by scope
    claimed, _ = reconcile([_component(4, 8, scopes=[(1, 14)]), _component(10, 11, scopes=[(1, 14)])],
                           [Refusal(5, "first")])
    assert [o.outcome for o in claimed] == ["refused", "not-understood"]
    # a fix within the component's own lines wins over one at an anchor
    anchored, _ = reconcile([_component(4, 8, anchors=[50])], [Fix(50, "stack", {}), Fix(6, "own", {})])
    assert anchored[0].reason == "own"


def test_skip_comments_silence_components() -> None:
    components = [_component(4, 8, scopes=[(3, 9)]), _component(20, 22, scopes=[(19, 23)])]
    assert unsuppressed(components, {3: frozenset({"TFM9"})}) == components[1:]
    assert unsuppressed(components, {21: frozenset({"*"})}) == components[:1]
    assert unsuppressed(components, {21: frozenset({"TFM1"})}) == components


def test_edits_dropped_turn_migrated_components_into_refused(monkeypatch) -> None:
    import tf_migrate.engine.file as engine_file

    text = (MODELS / "mingpt_style.py").read_text()
    monkeypatch.setattr(engine_file, "compile", lambda *a, **k: (_ for _ in ()).throw(SyntaxError("no")),
                        raising=False)
    result = migrate_source(text, "m.py", [r() for r in all_rules() if r.code == "TFM101"])
    assert not result.edits and result.components
    assert {c.outcome for c in result.components} == {"refused"}
    assert result.components[0].reason.startswith("the rewrite did not compile")


def test_json_and_statistics_carry_components_and_summary() -> None:
    rules = build_rules(Config(select=["all"]))
    results = [migrate_source(p.read_text(), p.name, rules) for p in (MODELS / "whisper_encdec.py",
                                                                     MODELS / "bert_style.py")]
    document = json.loads(json_document(results))
    first = document["components"][0]
    assert set(first) == {"rule", "kind", "file", "class", "lines", "outcome", "reason"}
    assert document["summary"] == census_summary(results)
    assert document["summary"]["TFM101"]["found"] == 2
    lines = statistics(results)
    assert lines[0].split() == ["rule", "found", "migrated", "refused", "already", "modern", "not",
                                "understood", "outside", "census"]
    assert any("TFM201 refused:" in line for line in lines)


def test_ordinary_module_gets_no_table_and_no_notes(tmp_path: Path) -> None:
    plain = tmp_path / "plain.py"
    plain.write_text("import torch.nn as nn\n\n\nclass Head(nn.Module):\n    def __init__(self):\n"
                     "        super().__init__()\n        self.proj = nn.Linear(4, 2)\n\n"
                     "    def forward(self, x):\n        return self.proj(x).softmax(-1)\n")
    done = subprocess.run([sys.executable, "-m", "tf_migrate", str(plain), "--select", "all", "--no-cache"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", done.stdout
    stats = subprocess.run([sys.executable, "-m", "tf_migrate", str(plain), "--statistics", "--no-cache"],
                           capture_output=True, text=True)
    assert stats.returncode == 0 and stats.stdout == ""


def test_text_output_ends_with_the_table(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tf_migrate", str(MODELS / "whisper_encdec.py"), "--select",
                           "all", "--no-cache"], capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("total") and lines[-len(lines) + lines.index("") + 1].startswith("rule")
    assert done.returncode == 1  # exit codes unchanged: something would change


_SCORES_CHANGED = '''
import torch
import torch.nn as nn


def hide_future(scores):
    n = scores.size(-1)
    scores[..., torch.tril_indices(n, n, -1)[0], torch.tril_indices(n, n, -1)[1]] = float("-inf")


class InPlace(nn.Module):
    def forward(self, q, k, v, keep):
        sim = q @ k.transpose(-1, -2)
        sim.masked_fill_(~keep, float("-inf"))
        return sim.softmax(dim=-1) @ v


class Helper(nn.Module):
    def forward(self, q, k, v):
        sim = q @ k.transpose(-1, -2)
        hide_future(sim)
        return sim.softmax(dim=-1) @ v
'''

_CONV1D = '''
import torch.nn as nn
from transformers.pytorch_utils import Conv1D


class Heads(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.q = Conv1D(width, width)
        self.k = Conv1D(width, width)
        self.v = Conv1D(width, width)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        return (q @ k.transpose(-2, -1)).softmax(-1) @ v
'''


@pytest.mark.parametrize("source, code, expected", [
    (_SCORES_CHANGED, "TFM101", [  # InPlace's masked_fill_ is part of the chain: migrated
        (21, "`sim` is passed to `hide_future(...)` at line 21, whose body")]),  # hides the past: not causal
    (_CONV1D, "TFM102", [(9, "`q` is a Conv1D (line 9): its weight is stored transposed")]),
])
def test_refusals_name_the_construct_at_its_line(source, code, expected) -> None:
    rule = next(r for r in all_rules() if r.code == code)
    result = migrate_source(source, "case.py", [rule()])
    got = sorted((r.line, r.reason) for r in result.refusals)
    assert [line for line, _ in got] == [line for line, _ in expected]
    for (_, reason), (_, words) in zip(got, expected):
        assert words in reason, reason
    assert len([c for c in result.components if c.outcome == "refused"]) == len(expected)
    assert {c.outcome for c in result.components} <= {"refused", "migrated"}


def test_lines_name_the_file_as_written_after_an_earlier_rule_changed_it() -> None:
    text = (MODELS / "einsum_gpt.py").read_text()
    rules = {r.code: r for r in all_rules()}
    together = migrate_source(text, "m.py", [r() for r in rules.values()])
    for code in ("TFM201", "TFM301", "TFM401"):
        alone = migrate_source(text, "m.py", [rules[code]()])
        assert [(e.line, e.message) for e in together.edits if e.code == code] == \
            [(e.line, e.message) for e in alone.edits]
        assert [(c.start_line, c.end_line) for c in together.components if c.rule == code] == \
            [(c.start_line, c.end_line) for c in alone.components]


def test_original_lines_and_relabel() -> None:
    from tf_migrate.engine.lines import identity, original_lines, relabel

    line_of = original_lines("a\nb\nc\nd\ne\n", "a\nB1\nB2\nd\ne\nf\n")
    assert [line_of(n) for n in range(1, 7)] == [1, 2, 2, 4, 5, 5]  # past the end: the last line
    assert relabel("scores at line 5, lines 4-5, line(s) 2, 3; dim=-1", line_of) == \
        "scores at line 5, lines 4-5, line(s) 2, 2; dim=-1"
    assert original_lines("x\n", "x\n") is identity


def test_census_runs_only_where_rules_run(monkeypatch) -> None:
    calls = []

    def census(self, ctx):
        calls.append(ctx.path)
        return ()

    rules = [r() for r in all_rules()]
    for rule in rules:
        monkeypatch.setattr(type(rule), "census", census)
    migrate_source("def softmax(x):\n    return x\n", "no_module.py", rules)  # trigger word, no nn.Module
    migrate_source("import torch.nn as nn\n\n\nclass A(nn.Module):\n    pass\n", "no_trigger.py", rules)
    assert calls == []
    migrate_source((MODELS / "mingpt_style.py").read_text(), "m.py", rules)
    assert calls and set(calls) == {"m.py"}
