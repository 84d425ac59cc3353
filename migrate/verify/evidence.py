"""Structural evidence per rule: the operations a rule removes and adds, per module path.

A rule adds its check by adding one `Expectation` to `EXPECTATIONS`; nothing else changes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tf_migrate.verify.ops import Op


@dataclass(frozen=True)
class Expectation:
    """`gone`: op names whose total must fall and none rise; `added`: op names that must appear."""

    gone: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    summary: str = ""
    added_any: tuple[str, ...] = ()  # at least one of these must appear more often
    # Count over the whole model instead of per changed class: for rules whose change spans
    # several classes (the positions leave the embedding, the rotation enters every attention).
    whole_model: bool = False


EXPECTATIONS: dict[str, Expectation] = {
    "TFM101": Expectation(
        gone=("softmax", "matmul", "einsum", "bmm"),
        added=("scaled_dot_product_attention",),
        summary="softmax/matmul/einsum/bmm gone, scaled_dot_product_attention added",
    ),
    "TFM102": Expectation(
        # Raw-parameter triples are applied with einsum, @/matmul or F.linear: one product of
        # the three goes, whichever spelling it has, and no spelling gains one.
        gone=("linear", "einsum", "matmul"),
        added_any=("split", "chunk"),
        summary="fewer projection products (three q/k/v linear/einsum/matmul products become one) and a split",
    ),
    "TFM301": Expectation(
        added_any=("silu", "gelu", "mul"),
        summary="gate added (silu/gelu of one projection times another)",
    ),
    "TFM201": Expectation(
        added=("layer_norm",),
        summary="a final norm added after the stack (norm placement itself is not checked)",
        whole_model=True,
    ),
    "TFM401": Expectation(
        added=("neg",),
        summary="rotary embeddings applied (the half-rotation's neg) in the model",
        whole_model=True,
    ),
}


@dataclass
class PathEvidence:
    rule: str
    path: str
    before: dict[str, int]
    after: dict[str, int]
    ok: bool


@dataclass
class RuleEvidence:
    rule: str
    summary: str
    paths: list[PathEvidence] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.paths) and not self.note.startswith("MISSING")


def _counts(ops: list[Op], path: str, names: tuple[str, ...]) -> Counter:
    inside = [op for op in ops if op.path == path or op.path.startswith(path + ".") or not path]
    return Counter(op.name for op in inside if op.name in names)


def rule_evidence(rule: str, paths: list[str], before: list[Op], after: list[Op]) -> RuleEvidence:
    expectation = EXPECTATIONS.get(rule)
    if expectation is None:
        return RuleEvidence(rule, "", note="no structural check declared for this rule")
    evidence = RuleEvidence(rule, expectation.summary)
    if expectation.whole_model and paths:
        paths = [""]
    if not paths:
        evidence.note = "MISSING: no module of the built model is an instance of a class this rule changed"
    names = expectation.gone + expectation.added + expectation.added_any
    for path in paths:
        old, new = _counts(before, path, names), _counts(after, path, names)
        gone_ok = not expectation.gone or (
            sum(new[n] for n in expectation.gone) < sum(old[n] for n in expectation.gone)
            and all(new[n] <= old[n] for n in expectation.gone))
        added_ok = all(new[n] > old[n] for n in expectation.added) and (
            not expectation.added_any or any(new[n] > old[n] for n in expectation.added_any))
        evidence.paths.append(PathEvidence(rule, path, _dense(old, names), _dense(new, names),
                                           gone_ok and added_ok))
    return evidence


def _dense(counts: Counter, names: tuple[str, ...]) -> dict[str, int]:
    return {name: counts[name] for name in names}
