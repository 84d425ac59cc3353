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
        "tracing": {"method": result.tracing, "reason": result.trace_failure, "tried": result.trace_failures},
        "outside": asdict(result.outside) | {"ok": result.outside.ok} if result.outside else result.outside_note,
        "instances": [asdict(c) for c in result.instances],
        "low_precision": [asdict(p) for p in result.low_precision],
        "first_node": result.first_node,
        "evidence": [asdict(e) | {"ok": e.ok} for e in result.evidence],
        "numerics": [asdict(c) for c in result.comparisons],
        "float64_rounds_to_float32": result.narrowed,
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
    lines += _instance_lines(result)
    if result.divergence:
        d = result.divergence
        how = "its inputs agree, its output does not" if not d.inherited else "first module whose output differs"
        lines.append(f"diverges first at: {d.path} (max abs diff {d.max_abs:.3g}; {how})")
    if result.first_node:
        lines.append(f"first diverging node: {result.first_node}")
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
    if result.tracing == "eager":
        lines = [f"structure: eager (no tracer could capture a torch.fx graph: {result.trace_failure})"]
    else:
        label = {"torch.export": "torch.export (strict=False)", "make_fx": "make_fx (real tensors)",
                 "fx.symbolic_trace": "fx.symbolic_trace (unmigrated modules as leaves)"}[result.tracing]
        lines = [f"structure: torch.fx graphs of before and after by {label}"]
        lines += [f"  tried first: {reason}" for reason in result.trace_failures]
    if result.outside is not None:
        also = " and the lines the rewriter changed" if result.outside_lines else ""
        lines.append(f"  outside the migrated modules{also}: {result.outside.compared} nodes identical" if result.outside.ok
                     else f"  BAD outside the migrated modules{also}: {result.outside.first}")
    elif result.outside_note:
        lines.append(f"  outside the migrated modules: {result.outside_note}")
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
    lines += [f"  note: the float64 original itself rounds to float32 in {path or '<root>'} ({line}): "
              "judged there, and for the whole model, at the float32 tolerances" for path, line in result.narrowed.items()]
    for c in result.comparisons:
        excluded = f", {c.excluded} excluded" if c.excluded else ""
        # compatible/retrain rules change the function on purpose: only the shape check and the
        # absolute difference are reported (their relative difference is not computed: NaN)
        rel = f", max rel {c.max_rel:.3g}" if c.max_rel == c.max_rel else " (function changed on purpose)"
        lines.append(f"  {'ok ' if c.ok else 'BAD'} input {c.input_index} {c.dtype}: max abs {c.max_abs:.3g}"
                     f"{rel}{excluded}" + (f" ({c.problem})" if c.problem else ""))
    return lines


def _instance_lines(result: Verification) -> list[str]:
    if not result.instances:
        return []
    lines = [f"modules (each migrated instance run on the inputs it receives; structure by {result.tracing}):",
             "  | instance | class | rules | structure | float32 max abs / rel | float64 max abs / rel |"]
    structure = {p.path: p.ok for e in result.evidence for p in e.paths}
    rows: dict[str, dict] = {}
    for c in result.instances:
        row = rows.setdefault(c.path, {"check": c, "ok": True})
        row[c.dtype] = c
        row["ok"] = row["ok"] and c.ok
    for path, row in rows.items():
        c = row["check"]
        shape = {True: "ok", False: "BAD"}.get(structure.get(path), "whole model" if structure else "-")
        figures = " | ".join(_figures(row.get(d)) for d in ("float32", "float64"))
        lines.append(f"  {'ok ' if row['ok'] else 'BAD'} | {path or '<root>'} | {c.cls} | {', '.join(c.rules)} "
                     f"| {shape} | {figures} |" + (f" {c.problem}" if c.problem else "")
                     + (f" ({c.returned_none} output(s) now None: no caller reads them)" if c.returned_none else ""))
    if result.low_precision:
        lines.append("low precision (max deviation from the float64 original; reported, never judged):")
        lines += [f"  {p.path or '<root>'} {p.dtype}: before {p.before:.3g}, after {p.after:.3g}"
                  + (f" ({p.problem})" if p.problem else "") for p in result.low_precision]
    return lines


def _figures(c) -> str:
    if c is None:
        return "-"
    rel = f"{c.max_rel:.3g}" if c.max_rel == c.max_rel else "changed on purpose"
    return f"{c.max_abs:.3g} / {rel} ({c.calls} calls)"
