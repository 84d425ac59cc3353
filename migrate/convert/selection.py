"""Which entries of a plan belong to the model whose checkpoint is converted.

A plan written for a whole directory holds the classes of several models, each entry keyed by the
file that defines it. With `--source AFTER.py`, the model's entries are those of that file and the
project files it imports (followed through the whole-tree index); without it, those of the files
with a class the checkpoint's keys identify (all of a plan's renamed, concatenated or dropped keys
present under one prefix). Entries of other files are left out, and said so, instead of failing the
conversion; when nothing identifies the model, every entry is kept (and the mapping explains).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tf_migrate.convert.errors import ConvertError
from tf_migrate.convert.mapping import _anchors, _prefixes, _weakly_anchored
from tf_migrate.plan import ClassPlan


def model_plans(plans: Sequence[ClassPlan], keys: Sequence[str],
                source: Path | None) -> tuple[list[ClassPlan], list[str]]:
    """(the entries to apply, the files whose entries are left out)."""
    files = list(dict.fromkeys(p.file for p in plans))
    if len(files) <= 1:
        return list(plans), []
    chosen = _imported_by(files, source) if source is not None else _identified(plans, keys)
    if not chosen:
        return list(plans), []
    return [p for p in plans if p.file in chosen], [f for f in files if f not in chosen]


def _identified(plans: Sequence[ClassPlan], keys: Sequence[str]) -> set[str]:
    """Files with a class whose keys the checkpoint holds; where classes of several files match
    under one prefix, the one that names more of the keys there (BERT's q/k/v alone against
    minGPT's q/k/v and its mask buffer) is the model's."""
    present = set(keys)
    matches: dict[str, dict[str, int]] = {}  # prefix -> file -> anchors matched
    for plan in plans:
        anchors = _anchors(plan)
        if not anchors or _weakly_anchored(plan):
            continue
        for prefix in _prefixes(keys, anchors[0]):
            if all(prefix + a in present for a in anchors):
                counts = matches.setdefault(prefix, {})
                counts[plan.file] = max(counts.get(plan.file, 0), len(anchors))
    chosen = set()
    for prefix, counts in matches.items():
        best = max(counts.values())
        winners = [f for f, n in counts.items() if n == best]
        if len(winners) > 1:
            raise ConvertError(f"the plan's entries of {' and '.join(sorted(winners))} all match the keys under "
                               f"{prefix.rstrip('.') or '(top level)'}: pass --source AFTER.py to say which model "
                               "this checkpoint is")
        chosen.add(winners[0])
    return chosen


def _imported_by(files: list[str], source: Path) -> set[str]:
    """Plan files that are `source` or a project file it imports, matched by their path's tail
    (the plan names files as the migration run saw them; AFTER may be a copy elsewhere)."""
    reachable = [Path(p).parts for p in _closure(source)]
    best: dict[str, int] = {}
    for file in files:
        parts = Path(file).parts
        best[file] = max((_common_tail(parts, r) for r in reachable), default=0)
    chosen = set()
    for file, score in best.items():
        rivals = [best[f] for f in files if Path(f).name == Path(file).name]
        if score and score == max(rivals):
            chosen.add(file)
    return chosen


def _common_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _closure(source: Path) -> set[str]:
    from tf_migrate.analysis.project import ProjectIndex
    from tf_migrate.analysis.project.summary import Imported

    project = ProjectIndex.for_files([source])
    start = str(source.resolve())
    seen, stack = {start}, [start]
    while stack:
        summary = project.summary(stack.pop())
        if summary is None:
            continue
        imports = [b for bound in summary.bindings.values() for b in bound if isinstance(b, Imported)]
        for imported in imports + summary.star_imports:
            target = project.module_file(imported.module, summary.path, imported.level)
            if imported.obj and target and target.endswith("__init__.py"):
                sub = project.module_file(imported.obj, target, 1)  # `from . import layers`
                target = sub or target
            if target and target.endswith(".py") and target not in seen:
                seen.add(target)
                stack.append(target)
    return seen
