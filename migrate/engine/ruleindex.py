"""Rule metadata without importing the rules, so a run over files with no candidate stays light.

Rule modules import libcst (about 150 ms). The metadata a run needs before it knows whether any
file has a candidate (code, name, equivalence, triggers, option defaults) is read from the rule
modules' source with `ast`; a rule is imported only when it is first asked to check a file. A
rule whose metadata is not written as literals is imported at once, which is correct, just slower.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from tf_migrate.engine.rule import Equivalence, Rule

_FIELDS = ("code", "name", "equivalence", "summary", "triggers", "options")
_OPTIONAL = ("outside_modules",)


@dataclass(frozen=True)
class RuleInfo:
    code: str
    name: str
    equivalence: Equivalence
    summary: str
    triggers: tuple[str, ...]
    options: Mapping[str, Any]
    module: str
    outside_modules: tuple[str, ...] = ()
    free_functions: bool = False  # see Rule.free_functions


class LazyRule:
    """Stands in for a `Rule` instance; imports and builds the real rule on the first `check`."""

    def __init__(self, info: RuleInfo, options: Mapping[str, Any] | None = None) -> None:
        self.info = info
        self.code, self.name, self.equivalence = info.code, info.name, info.equivalence
        self.triggers = info.triggers
        self.outside_modules = info.outside_modules
        self.free_functions = info.free_functions
        self.settings = {**info.options, **(options or {})}
        self._options = dict(options or {})
        self._rule: Rule | None = None

    def real(self) -> Rule:
        if self._rule is None:
            importlib.import_module(self.info.module)
            self._rule = Rule.registry[self.code](self._options)
        return self._rule

    def check(self, ctx: Any) -> Iterator[Any]:
        return self.real().check(ctx)

    def census(self, ctx: Any) -> Iterable[Any]:
        return self.real().census(ctx)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rule": None}


def _literal_fields(node: ast.ClassDef) -> dict[str, Any] | None:
    values: dict[str, Any] = {}
    for statement in node.body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            continue
        key, value = statement.targets[0].id, statement.value
        if key == "equivalence":
            if not (isinstance(value, ast.Attribute) and value.attr in Equivalence.__members__):
                return None
            values[key] = Equivalence[value.attr]
        elif key == "free_functions" and isinstance(value, ast.Constant) and isinstance(value.value, bool):
            values[key] = value.value
        elif key in _FIELDS or key in _OPTIONAL:
            try:
                values[key] = ast.literal_eval(value)
            except ValueError:
                return None
    values.setdefault("options", {})
    return values if set(_FIELDS) <= set(values) else None


def _infos_in(module: str, source: str) -> list[RuleInfo] | None:
    infos = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "code" for t in s.targets)
                for s in node.body):
            values = _literal_fields(node)
            if values is None:
                return None
            values["triggers"] = tuple(values["triggers"])
            values["outside_modules"] = tuple(values.get("outside_modules", ()))
            infos.append(RuleInfo(module=module, **values))
    return infos


def _imported_infos(module: str) -> list[RuleInfo]:
    loaded = importlib.import_module(module)
    return [RuleInfo(rule.code, rule.name, rule.equivalence, rule.summary, tuple(rule.triggers),
                     dict(rule.options), module, outside_modules=tuple(rule.outside_modules),
                     free_functions=rule.free_functions)
            for rule in Rule.registry.values() if rule.__module__ == loaded.__name__]


def rule_index() -> list[RuleInfo]:
    import tf_migrate.rules as package

    infos: list[RuleInfo] = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = f"{package.__name__}.{info.name}"
        spec = importlib.util.find_spec(module)
        found = None
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as handle:
                found = _infos_in(module, handle.read())
        infos.extend(found if found is not None else _imported_infos(module))
    return sorted(infos, key=lambda rule: rule.code)
