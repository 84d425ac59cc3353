"""The checkpoint plan: read from --plan, or recomputed by running the rewriter on BEFORE."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tf_migrate.engine.config import Config
from tf_migrate.engine.file import migrate_source
from tf_migrate.plan import ClassPlan, merge_plans
from tf_migrate.engine.source import SourceError, read_source
from tf_migrate.verify.loading import LoadError, Source


@dataclass
class PlanSource:
    plans: list[ClassPlan]
    origin: str  # "PLAN.json" or "recomputed (select exact)"
    notes: list[str] = field(default_factory=list)


def read_plan(path: Path) -> PlanSource:
    try:
        document = json.loads(path.read_text())
        plans = [ClassPlan.from_json(entry) for entry in document["classes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"--plan {path}: {exc}") from exc
    return PlanSource(merge_plans(plans), str(path))


def recompute_plan(before: Source, after: Source, select: list[str]) -> PlanSource:
    from tf_migrate.engine.run import UsageError, build_rules

    try:
        rules = build_rules(Config(select=select))
    except UsageError as exc:
        raise LoadError(str(exc)) from exc
    plans, notes = [], []
    files = [before.entry] if before.single else sorted(before.root.rglob("*.py"))
    for file in files:
        rel = before.relative(file)
        try:
            result = migrate_source(read_source(file).text, str(rel), rules)
        except SourceError as exc:
            raise LoadError(str(exc)) from exc
        plans.extend(result.plans)
        notes.extend(f"{rel}: {error.splitlines()[0]}" for error in result.errors)
        twin = after.entry if before.single else after.root / rel
        if result.changed and twin.is_file() and twin.read_text() != result.migrated:
            notes.append(f"{rel}: AFTER differs from what the rewriter produces from BEFORE today")
    return PlanSource(merge_plans(plans), f"recomputed by the rewriter (select {', '.join(select)})", notes)
