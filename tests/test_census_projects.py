"""Issue 14 over fixtures/models and fixtures/projects: every component the census finds ends with
exactly one outcome, every fix and refusal lies in a component, and where a manifest expects a
rule to act (or to refuse), the census found that rule's component.

The packages run as `tf-migrate DIR` runs them: every file through the engine with one
whole-tree index. Gaps that need a change inside a rule's package are strict xfails naming the
rule-side step: they fail loudly once that rule's census is fixed, so the mark comes off.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from helpers import FIXTURES, MODELS
from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine.census import OUTCOMES
from tf_migrate.engine.file import FileResult, migrate_source
from tf_migrate.engine.registry import all_rules, select_rules

PROJECTS = FIXTURES / "projects"
SPECS = tomllib.loads((PROJECTS / "manifest.toml").read_text())
RULES = ("TFM101", "TFM102", "TFM201", "TFM301", "TFM401")
ACTS = ("apply", "refuse", "apply-or-refuse")
_runs: dict[str, dict[str, FileResult]] = {}

# (package or model, rule) -> the step a rule's census does not take yet (rules/<rule>/census.py).
RULE_SIDE: dict[tuple[str, str], str] = {}


def _package(name: str) -> dict[str, FileResult]:
    if name not in _runs:
        folder = PROJECTS / name
        files = sorted(folder.rglob("*.py"))
        project = ProjectIndex.for_files(files)
        rules = [rule() for rule in select_rules(["all"])]
        _runs[name] = {str(p.relative_to(folder)): migrate_source(p.read_text(), str(p), rules, project)
                       for p in files}
    return _runs[name]


def _well_formed(result: FileResult, text: str) -> None:
    """One outcome per component, a reason, lines inside the file, no component counted twice."""
    assert not result.errors, result.errors
    lines = len(text.splitlines())
    keys = [(c.rule, c.kind, c.cls, c.start_line, c.end_line) for c in result.components]
    assert len(keys) == len(set(keys)), keys
    for c in result.components:
        assert c.outcome in OUTCOMES and c.reason.strip(), c
        assert 1 <= c.start_line <= c.end_line <= lines, c
        if c.outcome == "not-understood":
            assert f"line {c.start_line}" in c.reason or f"lines {c.start_line}-" in c.reason, c.reason


def _marked(pairs):
    return [pytest.param(*pair, marks=pytest.mark.xfail(strict=True, reason=RULE_SIDE[pair]))
            if pair in RULE_SIDE else pair for pair in pairs]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_component_of_a_package_has_one_outcome(name: str) -> None:
    for path, result in _package(name).items():
        _well_formed(result, (PROJECTS / name / path).read_text())


@pytest.mark.parametrize("name, code", _marked([(n, c) for n in sorted(SPECS) for c in RULES]))
def test_the_census_accounts_for_each_rule_in_a_package(name: str, code: str) -> None:
    results = _package(name)
    components = [c for r in results.values() for c in r.components if c.rule == code]
    outside = [(path, item.line) for path, r in results.items() for item in r.outside if item.code == code]
    assert outside == [], f"{code} findings no component accounts for: {outside}"
    expected = SPECS[name]["expect"][code]
    if expected in ACTS:
        assert components, f"{name}: {code} is expected to {expected}, the census found nothing"
    else:  # noop: nothing to migrate, so nothing found that the rule left unexplained
        assert not [c for c in components if c.outcome == "not-understood"], components


MODEL_FILES = sorted(MODELS.glob("*.py"))


@pytest.mark.parametrize("model, code", _marked([(p.stem, c) for p in MODEL_FILES for c in RULES]))
def test_every_fix_and_refusal_of_a_model_lies_in_a_component(model: str, code: str) -> None:
    text = (MODELS / f"{model}.py").read_text()
    result = migrate_source(text, f"{model}.py", [r() for r in all_rules()])
    _well_formed(result, text)
    assert [(item.line, item.message) for item in result.outside if item.code == code] == []


def test_the_rule_side_list_names_only_pairs_that_exist() -> None:
    known = set(SPECS) | {p.stem for p in MODEL_FILES}
    assert {name for name, _ in RULE_SIDE} <= known
    assert {code for _, code in RULE_SIDE} <= set(RULES)


_MODEL = """import torch.nn as nn
from blocks import Block


class Model(nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x
"""
_BLOCK = """import torch.nn as nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.mix = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
{body}
"""
_POST = "        y = self.mix(x)\n        y += x\n        y = self.norm(y)\n        return y"
_PRE = "        return x + self.mix(self.norm(x))"


@pytest.mark.parametrize("body, expected", [(_POST, [("Model", 11, "migrated")]), (_PRE, [])],
                         ids=["post-norm", "pre-norm"])
def test_a_stack_of_blocks_from_another_file_is_a_component_only_when_they_are_post_norm(
        tmp_path: Path, body: str, expected: list) -> None:
    (tmp_path / "blocks.py").write_text(_BLOCK.format(body=body))
    (tmp_path / "model.py").write_text(_MODEL)
    files = sorted(tmp_path.glob("*.py"))
    project = ProjectIndex.for_files(files)
    rules = [rule() for rule in select_rules(["all"])]
    result = migrate_source(_MODEL, str(tmp_path / "model.py"), rules, project)
    found = [(c.cls, c.start_line, c.outcome) for c in result.components if c.rule == "TFM201"]
    assert found == expected
    assert [item.line for item in result.outside if item.code == "TFM201"] == []
