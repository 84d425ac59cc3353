"""The layout's import direction: cli -> engine -> rules -> analysis, never back into a rule.

Walks every module of `tf_migrate.engine` and `tf_migrate.analysis` with `ast` (imports inside
functions and under TYPE_CHECKING count too) and fails on any import of a rule package
(`tf_migrate.rules.<rule>`); the registry may import the `tf_migrate.rules` package itself to
discover the rules. Rule packages may not import each other either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = sorted(p.parent.name for p in (ROOT / "rules").glob("*/__init__.py"))


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


@pytest.mark.parametrize("layer", ["engine", "analysis"])
def test_shared_layers_never_import_a_rule(layer: str) -> None:
    back_edges = [f"{path.relative_to(ROOT)}:{line}: {module}"
                  for path in sorted((ROOT / "migrate" / layer).rglob("*.py"))
                  for line, module in _imported_modules(path)
                  if module.startswith("tf_migrate.rules.")]
    assert not back_edges, "shared code imports a rule:\n" + "\n".join(back_edges)


@pytest.mark.parametrize("rule", RULES)
def test_a_rule_imports_no_other_rule(rule: str) -> None:
    others = [f"{path.relative_to(ROOT)}:{line}: {module}"
              for path in sorted((ROOT / "rules" / rule).rglob("*.py"))
              for line, module in _imported_modules(path)
              if module.startswith("tf_migrate.rules.")
              and module.split(".")[2] != rule]
    assert not others, f"rule package {rule} imports another rule:\n" + "\n".join(others)


def test_every_rule_is_a_package_and_migrate_has_no_rule_machinery() -> None:
    assert RULES, "no rule packages found"
    assert not list((ROOT / "rules").glob("[!_]*.py")), "rules/ holds a module outside a rule package"
