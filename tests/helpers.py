"""Shared test helpers: fixture discovery and loading model files under unique module names."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import tomllib
from pathlib import Path
from types import ModuleType

from tf_migrate.engine.registry import all_rules
from tf_migrate.engine.rule import Rule

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MODELS = FIXTURES / "models"
# whole models and multi-file projects: the fixtures that exercise every rule together
MODEL_SOURCES = sorted(MODELS.glob("*.py")) + sorted((FIXTURES / "projects").rglob("*.py"))
_counter = itertools.count()


def rule_for_folder(folder: str) -> type[Rule] | None:
    for rule in all_rules():
        if rule.__module__.rsplit(".", 1)[-1] == folder:
            return rule
    return None


def rule_folders() -> list[Path]:
    return sorted(p for p in FIXTURES.iterdir() if p.is_dir() and p.name not in ("models", "projects"))


def manifest() -> dict:
    return tomllib.loads((MODELS / "manifest.toml").read_text())


def meets_expectation(expected: str | None, result, code: str) -> bool:
    """Whether a FileResult does what a manifest `[stem.expect]` entry says rule `code` must do."""
    applied = any(e.code == code for e in result.edits)
    refused = any(r.code == code for r in result.refusals)
    return {"apply": applied, "refuse": refused and not applied, "noop": not applied and not refused,
            "apply-or-refuse": applied or refused}.get(expected, True)


def tensors(value) -> list:
    """The tensors of a forward result: a tensor, or nested tuples/lists of them (y, (k, v))."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors(item)]
    return []


def load_module(path: Path) -> ModuleType:
    """Import a file under a fresh name, so a file and its migrated copy can live side by side."""
    name = f"_tfm_test_{path.stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def assert_removes_as_the_visitor(source: str, removals: list) -> None:
    """`edits.remove_imports` removes from `source` what libcst's `RemoveImportsVisitor`, run over
    the whole module with the same removals scheduled, removes."""
    import libcst as cst
    from libcst.codemod import CodemodContext
    from libcst.codemod.visitors import RemoveImportsVisitor

    from tf_migrate.engine.edits import remove_imports

    expected_context, context = CodemodContext(), CodemodContext()
    for removal in removals:
        RemoveImportsVisitor.remove_unused_import(expected_context, *removal)
        RemoveImportsVisitor.remove_unused_import(context, *removal)
    module = cst.parse_module(source)
    expected = RemoveImportsVisitor(expected_context).transform_module(module).code
    assert remove_imports(module, module.code, removals, context).code == expected
