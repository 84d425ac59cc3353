"""The issue-17 bar: on every fixture model and every multi-file project, after the exact rules and
after all rules, verify captures both sides as torch.fx graphs (the tracer named, never the eager
record), proves the structure (per-rule evidence, and node for node outside the migrated regions)
and the numerics, and says VERIFIED."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from helpers import FIXTURES
from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import select_rules
from tf_migrate.plan import plan_document
from tf_migrate.verify.session import VerifyOptions, verify

pytestmark = pytest.mark.slow

MODELS = tomllib.loads((FIXTURES / "models" / "manifest.toml").read_text())
PROJECTS = tomllib.loads((FIXTURES / "projects" / "manifest.toml").read_text())
# torch.export gives up on a branch on a tensor's value; make_fx follows the one the input takes.
MAKE_FX = {("aliased_bmm", "all"), ("torch_builtin", "all")}
CASES = [(kind, name, select) for select in ("exact", "all")
         for kind, names in (("model", MODELS), ("project", PROJECTS)) for name in sorted(names)]


def _migrate_model(name: str, select: str, tmp_path: Path):
    source = FIXTURES / "models" / f"{name}.py"
    result = migrate_source(source.read_text(), source.name, [rule() for rule in select_rules([select])])
    after = tmp_path / source.name
    after.write_text(result.migrated)
    return source, after, MODELS[name]["build"], MODELS[name]["inputs"], result.plans, result.changed


def _migrate_project(name: str, select: str, tmp_path: Path):
    folder = FIXTURES / "projects" / name
    files = sorted(folder.rglob("*.py"))
    project = ProjectIndex.for_files(files)
    rules = [rule() for rule in select_rules([select])]
    before, after = tmp_path / "before", tmp_path / "after"
    shutil.copytree(folder, before)
    shutil.copytree(folder, after)
    plans, changed = [], False
    for file in files:
        relative = file.relative_to(folder)
        result = migrate_source(file.read_text(), str(relative), rules, project)
        (after / relative).write_text(result.migrated)
        plans += result.plans
        changed = changed or result.changed
    spec = PROJECTS[name]
    return before, after, f"{spec['import']}:{spec['build']}", spec["inputs"], plans, changed


@pytest.mark.parametrize("kind, name, select", CASES, ids=[f"{k}-{n}-{s}" for k, n, s in CASES])
def test_verify_traces_and_proves_every_fixture(kind, name, select, tmp_path):
    migrate = _migrate_model if kind == "model" else _migrate_project
    before, after, build, inputs, plans, changed = migrate(name, select, tmp_path)
    if not changed:
        pytest.skip(f"{select} rules leave {name} unchanged")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(plan_document(plans)))
    result = verify(VerifyOptions(before, after, build, inputs[:2], plan=plan, select=[select]))
    assert result.verified, result.failures
    assert result.tracing == ("make_fx" if (name, select) in MAKE_FX else "torch.export"), result.trace_failures
    assert result.outside is not None and result.outside.ok and result.outside.compared > 0
    assert all(e.ok and e.paths for e in result.evidence), result.evidence
    assert {c.dtype for c in result.comparisons} >= {"float32"}
    planned = {path for p in result.load.applied for path in [p.split(":")[0]]}
    called = {c.path or "<root>" for c in result.instances if c.calls}
    assert planned <= called, planned - called  # every migrated instance ran on the inputs it receives
