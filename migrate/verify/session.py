"""One verification: load, build, map the checkpoint, compare structure and numerics.

Returns a `Verification` (data); formatting is report.py's job, option parsing command.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tf_migrate.engine.registry import SelectionError, find_rule
from tf_migrate.engine.rule import Equivalence
from tf_migrate.verify import numerics
from tf_migrate.verify.building import as_args, build_model, evaluate
from tf_migrate.verify.checkpoint import LoadReport, map_and_load, planned_instances
from tf_migrate.verify.evidence import RuleEvidence, rule_evidence
from tf_migrate.verify.inputs import infer_inputs
from tf_migrate.verify.loading import LoadError, Source, load_module
from tf_migrate.verify.localize import Divergence, first_divergence
from tf_migrate.verify.ops import TraceFailure, eager_ops, fx_ops
from tf_migrate.verify.plans import PlanSource, read_plan, recompute_plan

SEED = 0


@dataclass
class VerifyOptions:
    before: Path
    after: Path
    build: str
    inputs: list[str] = field(default_factory=list)
    plan: Path | None = None
    entry: str | None = None
    select: list[str] = field(default_factory=lambda: ["exact"])
    rtol: float = 1e-4
    atol: float = 1e-5


@dataclass
class Verification:
    plan: PlanSource
    rules: dict[str, str]  # code -> equivalence class, for the rules the plan records
    load: LoadReport
    inputs: list[str]
    tracing: str = "torch.fx"  # or "eager"
    trace_failure: str = ""
    evidence: list[RuleEvidence] = field(default_factory=list)
    comparisons: list[numerics.Comparison] = field(default_factory=list)
    divergence: Divergence | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.failures


def verify(options: VerifyOptions) -> Verification:
    before_src = Source.from_args(options.before, options.entry)
    after_src = Source.from_args(options.after, options.entry)
    before_module = load_module(before_src, "before")
    before = build_model(options.build, before_module, SEED)
    after = build_model(options.build, load_module(after_src, "after"), SEED)
    plan = read_plan(options.plan) if options.plan else recompute_plan(before_src, after_src, options.select)
    root = None if before_src.single else before_src.root
    rules = {code: _equivalence(code) for p in plan.plans for code in p.rules}
    result = Verification(plan, rules, map_and_load(before, after, plan.plans, root), [])
    args, result.inputs = _inputs(options, before, before_module)
    try:
        with torch.no_grad():
            before(*args[0])
    except Exception as exc:
        raise LoadError(f"the original model fails on input 0 ({result.inputs[0]}): {exc!r}") from exc
    _structure(result, before, after, args[0], root)
    _numerics(result, before, after, args, options)
    _judge(result)
    return result


def _equivalence(code: str) -> str:
    try:
        return find_rule(code).equivalence.value
    except SelectionError:  # a plan written by a newer tf-migrate
        return "unknown"


def _inputs(options: VerifyOptions, model, module) -> tuple[list[tuple], list[str]]:
    if options.inputs:
        return [as_args(evaluate(expr, module, SEED)) for expr in options.inputs], list(options.inputs)
    from tf_migrate.verify.inputs import InputError

    try:
        args = infer_inputs(model, SEED)
    except InputError as exc:
        raise LoadError(str(exc)) from exc
    return args, [f"inferred: {', '.join(f'{tuple(a.shape)} {a.dtype}' for a in arg)}" for arg in args]


def _structure(result: Verification, before, after, args: tuple, root) -> None:
    try:
        old, new = fx_ops(before), fx_ops(after)
    except TraceFailure as exc:
        result.tracing, result.trace_failure = "eager", str(exc)
        old, new = eager_ops(before, args), eager_ops(after, args)
    instances = planned_instances(before, result.plan.plans, root)
    for code in result.rules:
        paths = [path for path, plan in instances if code in plan.rules]
        result.evidence.append(rule_evidence(code, paths, old, new))


def _numerics(result: Verification, before, after, args: list[tuple], options: VerifyOptions) -> None:
    if not result.load.ok:
        return  # a model that did not receive the original's weights proves nothing
    # an unknown rule (plan from a newer tf-migrate) is held to the strictest standard
    exact = not any(eq in (Equivalence.COMPATIBLE.value, Equivalence.RETRAIN.value) for eq in result.rules.values())
    for dtype in (torch.float32, torch.float64) if exact else (torch.float32,):
        old, new = numerics.cast_model(before, dtype), numerics.cast_model(after, dtype)
        for index, arg in enumerate(args):
            if exact:
                result.comparisons.append(
                    numerics.compare_outputs(old, new, arg, dtype, index, options.rtol, options.atol))
            else:
                result.comparisons.append(numerics.check_outputs_sane(old, new, arg, index))
    failed = next((c for c in result.comparisons if not c.ok), None)
    if exact and failed is not None:
        dtype = getattr(torch, failed.dtype)
        rtol, atol = numerics.tolerances(dtype, options.rtol, options.atol)
        from tf_migrate.verify.inputs import cast_floats

        result.divergence = first_divergence(numerics.cast_model(before, dtype), numerics.cast_model(after, dtype),
                                             cast_floats(args[failed.input_index], dtype), rtol, atol)


def _judge(result: Verification) -> None:
    load = result.load
    if not load.ok:
        result.failures.append("the mapped checkpoint does not load strictly")
    for evidence in result.evidence:
        if not evidence.ok:
            result.failures.append(f"{evidence.rule}: the structural change is not there")
    for c in result.comparisons:
        if not c.ok:
            result.failures.append(f"input {c.input_index} in {c.dtype}: outputs differ"
                                   + (f" ({c.problem})" if c.problem else ""))
    if result.divergence is not None:
        result.failures.append(f"first diverging submodule: {result.divergence.path}")
