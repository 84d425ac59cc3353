"""The checkpoint plan: how a migrated class's state_dict keys relate to the original's.

Keys are relative to an instance of the class (`bias`, `attn.w_q`), so the converter can apply a
plan under any prefix (`blocks.3.attn.`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class Concatenation:
    target: str
    sources: list[str]
    dim: int = 0


@dataclass
class NewKey:
    key: str
    init: str  # "ones", "zeros", "identity", "normal(std=0.02)", ...
    shape: list[str] | None = None


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
            "new": [vars(n) for n in self.new],
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
