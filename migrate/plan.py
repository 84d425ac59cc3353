"""The checkpoint plan: how a migrated class's state_dict keys relate to the original's.

Keys are relative to an instance of the class (`bias`, `attn.w_q`), so the converter can apply a
plan under any prefix (`blocks.3.attn.`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

# The one vocabulary of NewKey.init, shared by every rule, the converter and the verifier.
INITS = {
    "ones": "all ones",
    "zeros": "all zeros",
    "identity": "the identity matrix (all ones for a norm's scale vector)",
    "normal(std=X)": "normal(0, X), seeded",
    "default": "the migrated module's own initialisation, taken from a freshly built migrated model",
}
_NORMAL = re.compile(r"normal\(std=([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\)")


def parse_init(init: str) -> tuple[str, float | None]:
    """("ones" | "zeros" | "identity" | "default", None) or ("normal", std); ValueError otherwise."""
    if init in ("ones", "zeros", "identity", "default"):
        return init, None
    normal = _NORMAL.fullmatch(init)
    if normal:
        return "normal", float(normal[1])
    raise ValueError(f"unknown init {init!r} (known: {', '.join(INITS)})")


@dataclass
class Concatenation:
    target: str
    sources: list[str]
    dim: int = 0


@dataclass
class NewKey:
    key: str
    init: str  # one of INITS; anything else is a bug in the rule, or a hand-edited plan
    shape: list[str] | None = None
    note: str = ""  # for people: where the value comes from in the model's source

    def __post_init__(self) -> None:
        parse_init(self.init)

    def to_json(self) -> dict[str, Any]:
        data = {"key": self.key, "init": self.init, "shape": self.shape}
        return {**data, "note": self.note} if self.note else data


@dataclass
class ClassPlan:
    file: str
    qualname: str
    rules: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    concatenated: list[Concatenation] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    new: list[NewKey] = field(default_factory=list)

    def merge(self, other: "ClassPlan") -> None:
        for code in other.rules:
            if code not in self.rules:
                self.rules.append(code)
        self.renamed.update(other.renamed)
        self.concatenated.extend(other.concatenated)
        self.dropped.extend(k for k in other.dropped if k not in self.dropped)
        self.new.extend(other.new)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "class": self.qualname,
            "rules": self.rules,
            "renamed": self.renamed,
            "concatenated": [vars(c) for c in self.concatenated],
            "dropped": self.dropped,
            "new": [n.to_json() for n in self.new],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ClassPlan":
        return cls(
            file=data["file"],
            qualname=data["class"],
            rules=list(data.get("rules", [])),
            renamed=dict(data.get("renamed", {})),
            concatenated=[Concatenation(**c) for c in data.get("concatenated", [])],
            dropped=list(data.get("dropped", [])),
            new=[NewKey(**n) for n in data.get("new", [])],
        )


def merge_plans(plans: Iterable[ClassPlan]) -> list[ClassPlan]:
    """One entry per (file, class), in first-seen order."""
    merged: dict[tuple[str, str], ClassPlan] = {}
    for plan in plans:
        key = (plan.file, plan.qualname)
        if key in merged:
            merged[key].merge(plan)
        else:
            merged[key] = ClassPlan(plan.file, plan.qualname)
            merged[key].merge(plan)
    return list(merged.values())


def plan_document(plans: Iterable[ClassPlan]) -> dict[str, Any]:
    return {"version": 1, "classes": [p.to_json() for p in merge_plans(plans)]}
