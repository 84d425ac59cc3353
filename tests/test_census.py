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

from helpers import FIXTURES, MODELS, manifest, rule_folders, rule_for_folder
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
    assert any("TFM301 refused:" in line for line in lines)  # whisper's kernel-3 Conv1d FFN, one line per reason


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


def test_statistics_fold_line_numbers_only() -> None:
    from tf_migrate.engine.report import fold_lines

    assert fold_lines("line 12: `attn` is returned at line 40") == "`attn` is returned at line N"
    assert fold_lines("instantiated at line(s) 4, 9 and lines 3-5") == "instantiated at line(s) N and lines N"
    assert fold_lines("counted in (pkg/model.py:71)") == "counted in (pkg/model.py:N)"
    assert fold_lines("syntax error at line 3, column 7") == "syntax error at line N, column N"
    # names and sizes are part of the reason: `linear1` and `linear2` stay apart, a kernel stays 3
    assert fold_lines("linear1 -> act -> linear2, kernel 3") == "linear1 -> act -> linear2, kernel 3"


def test_statistics_in_json_count_each_reason(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tf_migrate", str(MODELS / "whisper_encdec.py"),
                           str(MODELS / "torch_builtin.py"), "--select", "all", "--no-cache", "--statistics",
                           "--format", "json"], capture_output=True, text=True)
    document = json.loads(done.stdout)
    rules = build_rules(Config(select=["all"]))
    results = [migrate_source(p.read_text(), str(p), rules) for p in (MODELS / "whisper_encdec.py",
                                                                      MODELS / "torch_builtin.py")]
    assert document["summary"] == census_summary(results)
    reasons = document["reasons"]
    assert reasons and all(set(r) == {"count", "rule", "outcome", "reason"} for r in reasons)
    assert sum(r["count"] for r in reasons) == sum(
        counts["found"] - counts["migrated"] for counts in document["summary"].values())
    assert any("linear1 -> activation -> linear2" in r["reason"] for r in reasons)


_NOT_UNDERSTOOD = FIXTURES / "swiglu" / "tanh_and_lookalikes.census.py"


def test_not_understood_items_are_notes_at_their_line_and_column_in_github_and_sarif() -> None:
    text = _NOT_UNDERSTOOD.read_text()
    item = next(c for c in migrate_source(text, "m.py", build_rules(Config(select=["TFM301"]))).components
                if c.outcome == "not-understood")
    column = len(text.splitlines()[item.start_line - 1]) - len(text.splitlines()[item.start_line - 1].lstrip()) + 1
    github = subprocess.run([sys.executable, "-m", "tf_migrate", str(_NOT_UNDERSTOOD), "--select", "TFM301",
                             "--no-cache", "--format", "github"], capture_output=True, text=True)
    # annotations only: no text finding, no table repeating them in the log
    assert github.stdout.splitlines() == [
        f"::notice file={_NOT_UNDERSTOOD},line={item.start_line},col={column},title=TFM301 not understood::"
        f"{item.reason}"]
    sarif = subprocess.run([sys.executable, "-m", "tf_migrate", str(_NOT_UNDERSTOOD), "--select", "TFM301",
                            "--no-cache", "--format", "sarif"], capture_output=True, text=True)
    [entry] = json.loads(sarif.stdout)["runs"][0]["results"]
    assert entry["level"] == "note" and entry["message"]["text"] == f"not understood: {item.reason}"
    assert entry["locations"][0]["physicalLocation"]["region"] == {"startLine": item.start_line,
                                                                   "startColumn": column}


_BLOCKS = '''
import torch
import torch.nn as nn


class ScoresOut(nn.Module):
    def forward(self, q, k, v):
        scores = q @ k.transpose(-1, -2)
        out = scores.softmax(dim=-1) @ v
        return out, scores.detach()


class Looped(nn.Module):
    def forward(self, q, k, v, masks):
        sim = q @ k.transpose(-1, -2)
        for m in masks:
            sim = sim.masked_fill(m, float("-inf"))
        return sim.softmax(dim=-1) @ v


class Branches(nn.Module):
    def forward(self, q, k, v, mask=None):
        sim = q @ k.transpose(-1, -2)
        if mask is not None:
            sim = sim.masked_fill(mask, float("-inf"))
        else:
            sim = sim * 1.0
        return sim.softmax(dim=-1) @ v


class Nested(nn.Module):
    def forward(self, q, k, v, mask=None, big=False):
        sim = q @ k.transpose(-1, -2)
        if mask is not None:
            if big:
                sim = sim.masked_fill(mask, float("-inf"))
        return sim.softmax(dim=-1) @ v
'''


def test_chain_refusals_name_the_block_and_what_the_binding_holds() -> None:
    rule = next(r for r in all_rules() if r.code == "TFM101")
    result = migrate_source(_BLOCKS, "case.py", [rule()])
    assert [(r.line, r.reason) for r in result.refusals] == [
        (10, "the attention scores `scores` are returned at line 10"),  # not "probabilities (or scores)"
        (16, "`sim` is rebound inside a `for` statement `for m in masks:` (line 16): tf-migrate follows "
             "plain statements and `if` blocks"),
        (24, "`sim` is rebound inside `if mask is not None:` (line 24), which has an else branch: tf-migrate "
             "follows an `if` without else that binds it once"),
        (34, "`sim` is rebound in a block nested inside `if mask is not None:` (line 34): tf-migrate follows "
             "one assignment directly in the `if` block"),
    ]
    assert [c.outcome for c in result.components] == ["refused"] * 4


def _attending_block(name: str, *tail: str) -> str:
    """A block with q/k/v attention and an up/down FFN; `tail` ends its forward."""
    return f"""

class {name}(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        x = x + (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
""" + "".join(f"        {line}\n" for line in tail)


_IMPORTS = "\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
_HEAD_AND_BLOCK = _IMPORTS + '''

class ActionHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(8, 32)
        self.scores = nn.Linear(32, 3)

    def forward(self, obs):
        h = F.relu(self.hidden(obs))
        return F.softmax(self.scores(h), dim=-1)
''' + _attending_block("Block", "return x + self.down(F.relu(self.up(x)))")


def test_a_softmax_over_a_linear_output_is_a_head_not_attention() -> None:
    """A policy or classifier head (`softmax(self.scores(h))`) does not make its class a block:
    its hidden layer is no FFN (the torch tree's RL policy was counted as one)."""
    rule = next(r for r in all_rules() if r.code == "TFM301")
    result = migrate_source(_HEAD_AND_BLOCK, "case.py", [rule()])
    assert [(c.cls, c.outcome) for c in result.components] == [("Block", "migrated")]
    assert [e.line for e in result.edits] == [29] and not result.refusals


_CHANGED_SCORES = '''
import torch.nn as nn


class Guarded(nn.Module):
    def forward(self, q, k, v, temp=None):
        sim = q @ k.transpose(-1, -2)
        if temp is not None:
            sim = sim.tanh()
        return sim.softmax(dim=-1) @ v


class InBlock(nn.Module):
    def forward(self, q, k, v, mask=None):
        sim = q @ k.transpose(-1, -2)
        if mask is not None:
            print("masking")
            sim = sim.tanh()
        return sim.softmax(dim=-1) @ v


class Rebind(nn.Module):
    def forward(self, q, k, v):
        sim = q @ k.transpose(-1, -2)
        q = v * 2
        attn = sim.softmax(dim=-1)
        return attn @ v, q
'''


def test_refusals_quote_the_statement_that_is_not_a_mask_and_the_rebinding_line() -> None:
    rule = next(r for r in all_rules() if r.code == "TFM101")
    result = migrate_source(_CHANGED_SCORES, "case.py", [rule()])
    assert [(r.line, r.reason) for r in result.refusals] == [
        (8, "the scores `sim` are set to `sim.tanh()` under `if temp is not None:` (line 8), which is not "
            "a mask (a masked_fill or an added mask)"),
        (18, "`sim` is set to `sim.tanh()` inside the `if` block at line 16, which is not a masked_fill"),
        (24, "`q` is rebound at line 25, between the scores and the product"),
    ]


_FFN_REREAD = _IMPORTS + _attending_block("Block", "h = F.relu(self.up(x))", "width = h.shape[-1]",
                                         "return x + self.down(h), width") \
    + _attending_block("Twice", "h = F.relu(self.up(x))", "return x + self.down(h), h.sum()")


def test_ffn_refusals_tell_a_metadata_read_from_a_second_use_and_name_its_line() -> None:
    rule = next(r for r in all_rules() if r.code == "TFM301")
    result = migrate_source(_FFN_REREAD, "case.py", [rule()])
    assert [(r.line, r.reason) for r in result.refusals] == [
        (18, "`h.shape` is read at line 19, outside the feed-forward: the rewrite removes `h` (read it from "
             "the FFN's input or output instead)"),
        (35, "`h` inside the feed-forward is read again at line 36"),
    ]


_CHAINED_SCORES = '''
import torch.nn as nn


class Chained(nn.Module):
    def forward(self, q, k, v):
        sim = raw = q @ k.transpose(-1, -2)
        attn = sim.softmax(dim=-1)
        return attn @ v
'''


def test_a_chained_assignment_of_the_scores_is_named_as_one() -> None:
    rule = next(r for r in all_rules() if r.code == "TFM101")
    result = migrate_source(_CHAINED_SCORES, "case.py", [rule()])
    assert [(r.line, r.reason) for r in result.refusals] == [
        (7, "the scores `sim` are bound in the chained assignment `sim = raw = q @ k.transpose(-1, -2)` "
            "(line 7): `raw` also holds them, and SDPA never materialises the scores")]
    assert [c.outcome for c in result.components] == ["refused"]


def test_statistics_count_the_reasons_of_refusals_outside_the_census() -> None:
    from tf_migrate.engine.census import ComponentOutcome
    from tf_migrate.engine.file import Diagnostic, Edit, FileResult
    from tf_migrate.engine.report import reason_counts

    result = FileResult("m.py", components=[ComponentOutcome("TFM101", "attention", "A", 3, 5, "refused",
                                                             "line 4: `attn` is returned at line 5")],
                        refusals=[Diagnostic("TFM101", 4, "`attn` is returned at line 5"),
                                  Diagnostic("TFM102", 11, "not the same tensor (line 23: q, line 24: k)")],
                        outside=[Edit("TFM102", 11, "refusal")])
    assert reason_counts([result]) == [
        (1, "TFM101", "refused", "`attn` is returned at line N"),
        (1, "TFM102", "refused outside census", "not the same tensor (line N: q, line N: k)")]


_PRODUCT_MODULES = '''
import torch
import torch.nn as nn


class Einsum(nn.Module):
    def __init__(self, equation):
        super().__init__()
        self.equation = equation

    def forward(self, operands):
        return torch.einsum(self.equation, *operands)


class Softmax(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return torch.softmax(x, self.dim)


class Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.matmul1 = Einsum("bid,bjd->bij")
        self.matmul2 = Einsum("bij,bjd->bid")
        self.softmax = Softmax(dim=-1)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = self.softmax(self.matmul1([q, k]) * 0.125)
        return self.matmul2([attn, v])


class Mlp(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = Attn(d)
        self.mlp = Mlp(d)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)
'''


def test_scores_computed_by_a_product_module_are_still_attention() -> None:
    """`self.matmul1([q, k])` (explainability code's product modules) computes the scores: the
    softmax over it is attention even though `q` comes from a Linear, so the Mlp beside it is an FFN."""
    rule = next(r for r in all_rules() if r.code == "TFM301")
    result = migrate_source(_PRODUCT_MODULES, "case.py", [rule()])
    assert [c.cls for c in result.components] == ["Mlp"]


def test_the_block_named_in_a_refusal_is_its_header_not_the_comment_above_it() -> None:
    source = _BLOCKS.replace("        if mask is not None:\n            sim = sim.masked_fill(mask, float(\"-inf\"))\n"
                             "        else:", "        # hide the padding\n        if mask is not None:\n"
                             "            sim = sim.masked_fill(mask, float(\"-inf\"))\n        else:")
    assert source.count("# hide the padding") == 1
    rule = next(r for r in all_rules() if r.code == "TFM101")
    reasons = [r.reason for r in migrate_source(source, "case.py", [rule()]).refusals]
    assert "`sim` is rebound inside `if mask is not None:` (line 25), which has an else branch" in reasons[2]
