"""Every component a rule's census found ends with one outcome, taken from the rule's findings.

A finding belongs to a component when its line lies in the component's lines or anchors; a
component no finding lands on takes the nearest finding in the function (then the class) around
it that no component claimed (a refusal raised at the `return` that leaks the probabilities).
Otherwise the component is "not understood": the census saw the pattern, the matcher said nothing.
Findings that belong to no component are kept as they are and counted: the census is narrower
than the matcher there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tf_migrate.engine import suppress
from tf_migrate.engine.rule import Component, Finding, Fix, Note, Refusal

OUTCOMES = ("migrated", "refused", "modern", "not-understood")
_PRIORITY = {Fix: 0, Refusal: 1, Note: 2}


@dataclass(frozen=True)
class ComponentOutcome:
    rule: str
    kind: str
    cls: str
    start_line: int
    end_line: int
    outcome: str
    reason: str


def _inside(line: int, component: Component) -> bool:
    return component.start_line <= line <= component.end_line or line in component.anchors


def _best(findings: list[Finding], component: Component) -> Finding:
    return min(findings, key=lambda f: (not component.start_line <= f.line <= component.end_line,
                                        _PRIORITY[type(f)], abs(f.line - component.start_line)))


def _outcome(component: Component, finding: Finding | None) -> ComponentOutcome:
    if isinstance(finding, Fix):
        outcome, reason = "migrated", finding.message
    elif isinstance(finding, Refusal):
        outcome, reason = "refused", f"line {finding.line}: {finding.reason}"
    elif isinstance(finding, Note):
        outcome, reason = "modern", finding.message
    else:
        where = (f"line {component.start_line}" if component.start_line == component.end_line
                 else f"lines {component.start_line}-{component.end_line}")
        outcome = "not-understood"
        reason = f"{component.what} ({where}); " + (
            component.step or "the matcher did not recognise it and gave no reason")
    return ComponentOutcome(component.rule, component.kind, component.cls, component.start_line,
                            component.end_line, outcome, reason)


def reconcile(components: Sequence[Component], findings: Sequence[Finding]
              ) -> tuple[list[ComponentOutcome], list[Finding]]:
    """(one outcome per component, the fixes and refusals no component accounts for)."""
    chosen: dict[int, Finding | None] = {}
    claimed: set[int] = set()
    for i, component in enumerate(components):
        near = [f for f in findings if _inside(f.line, component)]
        if near:
            chosen[i] = _best(near, component)
            claimed.update(id(f) for f in near)
    for i, component in enumerate(components):
        if i in chosen:
            continue
        for start, end in component.scopes:
            around = [f for f in findings if start <= f.line <= end and id(f) not in claimed]
            if around:
                chosen[i] = _best(around, component)
                break
    used = claimed | {id(f) for f in chosen.values() if f is not None}
    outcomes = [_outcome(c, chosen.get(i)) for i, c in enumerate(components)]
    outside = [f for f in findings if id(f) not in used and isinstance(f, (Fix, Refusal))]
    return outcomes, outside


def unsuppressed(components: Sequence[Component], skips: dict[int, frozenset[str]]) -> list[Component]:
    """Drop components a `# tf-migrate: skip` comment covers: the user asked for silence there."""
    if not skips:
        return list(components)

    def covered(component: Component) -> bool:
        lines = list(range(component.start_line, component.end_line + 1))
        lines += [line for start, _ in component.scopes for line in (start - 1, start)]
        return any(suppress.covers(skips.get(n, frozenset()), component.rule) for n in lines)

    return [c for c in components if not covered(c)]
