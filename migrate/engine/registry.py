"""Finds the rules and turns selectors (code, prefix, name, equivalence class) into rules.

This is the only place where codes and names are resolved.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Iterable

from tf_migrate.engine.rule import Equivalence, Rule


class SelectionError(ValueError):
    pass


def all_rules() -> list[type[Rule]]:
    import tf_migrate.rules as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    return sorted(Rule.registry.values(), key=lambda rule: rule.code)


def find_rule(selector: str) -> type[Rule]:
    for rule in all_rules():
        if selector.upper() == rule.code or selector == rule.name:
            return rule
    raise SelectionError(f"unknown rule {selector!r} (see `tf-migrate rules`)")


def _matches(rule: type[Rule], selector: str) -> bool:
    selector = selector.strip()
    if selector == "all":
        return True
    if selector in {e.value for e in Equivalence}:
        return rule.equivalence.value == selector
    return rule.code.startswith(selector.upper()) or rule.name == selector


def select_rules(select: Iterable[str], ignore: Iterable[str] = (), rules: list | None = None) -> list:
    """Rule classes, or the given stand-ins (anything with .code, .name, .equivalence)."""
    rules = all_rules() if rules is None else rules
    select, ignore = list(select), list(ignore)
    for selector in select + ignore:
        if not any(_matches(rule, selector) for rule in rules):
            raise SelectionError(f"selector {selector!r} matches no rule (see `tf-migrate rules`)")
    chosen = [r for r in rules if any(_matches(r, s) for s in select)]
    return [r for r in chosen if not any(_matches(r, s) for s in ignore)]
