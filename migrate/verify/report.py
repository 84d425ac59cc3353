"""Formats a `Verification` as text or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict

from tf_migrate.verify.numerics import FLOAT64_FACTOR
from tf_migrate.verify.session import Verification


def json_document(result: Verification) -> str:
    document = {
        "verified": result.verified,
        "failures": result.failures,
        "plan": {"origin": result.plan.origin, "notes": result.plan.notes,
                 "classes": [p.to_json() for p in result.plan.plans]},
        "rules": result.rules,
        "checkpoint": asdict(result.load),
        "inputs": result.inputs,
        "tracing": {"method": result.tracing, "reason": result.trace_failure},
        "evidence": [asdict(e) | {"ok": e.ok} for e in result.evidence],
        "numerics": [asdict(c) for c in result.comparisons],
        "divergence": asdict(result.divergence) if result.divergence else None,
    }
    return json.dumps(document, indent=2, default=str)


def text_lines(result: Verification) -> list[str]:
    lines = [f"plan: {result.plan.origin}; rules: "
             + (", ".join(f"{c} ({e})" for c, e in result.rules.items()) or "none")]
    lines += [f"  note: {note}" for note in result.plan.notes]
    lines += _checkpoint_lines(result)
    lines += _structure_lines(result)
    lines += _numeric_lines(result)
    if result.divergence:
        d = result.divergence
        how = "its inputs agree, its output does not" if not d.inherited else "first module whose output differs"
        lines.append(f"diverges first at: {d.path} (max abs diff {d.max_abs:.3g}; {how})")
    lines.append("VERIFIED" if result.verified else "NOT VERIFIED: " + "; ".join(result.failures))
    return lines


def _checkpoint_lines(result: Verification) -> list[str]:
    load = result.load
    lines = [f"checkpoint: plan applied at {len(load.applied)} module(s); strict load "
             + ("ok" if load.ok else "FAILED")]
    lines += [f"  applied {entry}" for entry in load.applied]
    lines += [f"  missing key: {key}" for key in load.missing]
    lines += [f"  unexpected key: {key}" for key in load.unexpected]
    lines += [f"  plan error: {error}" for error in load.plan_errors]
    lines += [f"  new key {key}: {state}" for key, state in load.new_keys.items()]
    lines += [f"  error: {line}" for line in load.error.splitlines()]
    return lines


def _structure_lines(result: Verification) -> list[str]:
    how = result.tracing if not result.trace_failure else f"eager (torch.fx could not trace: {result.trace_failure})"
    lines = [f"structure: {how}"]
    for evidence in result.evidence:
        lines.append(f"  {evidence.rule}: {evidence.summary or evidence.note}"
                     + (f" [{evidence.note}]" if evidence.summary and evidence.note else ""))
        for p in evidence.paths:
            change = ", ".join(f"{n} {p.before[n]}->{p.after[n]}" for n in p.before if p.before[n] or p.after[n])
            lines.append(f"    {'ok ' if p.ok else 'BAD'} {p.path or '<root>'}: {change or 'no such ops'}")
    return lines


def _numeric_lines(result: Verification) -> list[str]:
    if not result.comparisons:
        return ["numerics: not run (the checkpoint did not load)"]
    lines = [(f"numerics (eval mode; float64 tolerances = float32 ones x {FLOAT64_FACTOR:g}; "
              "positions where the original is not finite, e.g. fully masked rows, are excluded):")]
    for c in result.comparisons:
        excluded = f", {c.excluded} excluded" if c.excluded else ""
        # compatible/retrain rules change the function on purpose: only the shape check and the
        # absolute difference are reported (their relative difference is not computed: NaN)
        rel = f", max rel {c.max_rel:.3g}" if c.max_rel == c.max_rel else " (function changed on purpose)"
        lines.append(f"  {'ok ' if c.ok else 'BAD'} input {c.input_index} {c.dtype}: max abs {c.max_abs:.3g}"
                     f"{rel}{excluded}" + (f" ({c.problem})" if c.problem else ""))
    return lines
