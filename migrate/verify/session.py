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
from tf_migrate.verify.building import Builder, as_args, evaluate
from tf_migrate.verify.checkpoint import LoadReport, map_and_load, planned_instances
from tf_migrate.verify.evidence import EXPECTATIONS, RuleEvidence, rule_evidence
from tf_migrate.verify.graphdiff import OutsideDiff, outside_diff
from tf_migrate.verify.inputs import cast_floats, infer_inputs, paired_tensors, tensors
from tf_migrate.verify.instances import (InstanceCheck, LowPrecision, compare_instances, low_precision,
                                         record_calls)
from tf_migrate.verify.loading import LoadError, Source, load_module, module_entry, split_build
from tf_migrate.verify.localize import Divergence, first_divergence
from tf_migrate.verify.options import VerifyOptions
from tf_migrate.verify.plans import PlanSource, read_plan, recompute_plan
from tf_migrate.verify.precision import narrowed_within, narrowings
from tf_migrate.verify.regions import ChangedCode, changed_code, reconfigured
from tf_migrate.verify.tracing import Capture, capture

SEED = 0
LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class Verification:
    plan: PlanSource
    rules: dict[str, str]  # code -> equivalence class, for the rules the plan records
    load: LoadReport
    inputs: list[str]
    tracing: str = "torch.export"  # the tracer that captured both sides, or "eager"
    trace_failures: list[str] = field(default_factory=list)  # earlier tracers' reasons
    evidence: list[RuleEvidence] = field(default_factory=list)
    outside: OutsideDiff | None = None  # None: not compared (eager record, or a whole-model rule)
    outside_note: str = ""
    outside_lines: bool = False  # the region also holds the lines the rewriter changed
    comparisons: list[numerics.Comparison] = field(default_factory=list)
    instances: list[InstanceCheck] = field(default_factory=list)
    low_precision: list[LowPrecision] = field(default_factory=list)
    narrowed: dict[str, str] = field(default_factory=dict)  # path -> line where the float64 original rounds to float32
    divergence: Divergence | None = None
    first_node: str = ""  # inside the first failing instance: the node that departs
    failures: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.failures

    @property
    def trace_failure(self) -> str:
        return "; ".join(self.trace_failures) if self.tracing == "eager" else ""


def sources(options: VerifyOptions) -> tuple[Source, Source, str]:
    """BEFORE and AFTER sources and the bare build expression (a `pkg.model:` prefix names the entry)."""
    module_path, expr = split_build(options.build)
    entry = options.entry
    if module_path is not None:
        if not Path(options.before).is_dir() or not Path(options.after).is_dir():
            raise LoadError(f"--build {options.build!r} names a module: BEFORE and AFTER must be directories")
        entry = module_entry(Path(options.before).resolve(), module_path)
    return Source.from_args(options.before, entry), Source.from_args(options.after, entry), expr


def verify(options: VerifyOptions) -> Verification:
    before_src, after_src, expr = sources(options)
    before_module = load_module(before_src, "before")
    sides = Builder(expr, before_module, SEED), Builder(expr, load_module(after_src, "after"), SEED)
    before, after = sides[0].build(), sides[1].build()
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
    planned = [(path, plan.qualname, list(plan.rules)) for path, plan in planned_instances(before, plan.plans, root)]
    if result.load.ok:  # a model that did not receive the original's weights proves nothing
        _numerics(result, sides, before, after, args, planned, options)
    # Tracing comes last and on copies built again: torch.export runs the forward over fake
    # tensors, and a model that caches a tensor on itself or in its module (a rotary table
    # computed on first use) keeps a fake one; nothing runs the models after this.
    traced = (side.with_state(model.state_dict(), torch.float32) for side, model in zip(sides, (before, after)))
    _structure(result, *traced, args[0], planned, _changed(options, before_src, after_src, plan))
    _judge(result)
    return result


def _known(code: str) -> bool:
    try:
        find_rule(code)
    except SelectionError:
        return False
    return True


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


def _changed(options: VerifyOptions, before: Source, after: Source, plan: PlanSource) -> ChangedCode:
    """The lines the rewriter changes, with the rules of the plan and of --select."""
    known = [code for p in plan.plans for code in p.rules if _known(code)]  # a newer tf-migrate's plan may name more
    select = list(dict.fromkeys([*options.select, *known]))
    return changed_code(before, after, select)


def _structure(result: Verification, before, after, args: tuple, planned: list, changed: ChangedCode) -> None:
    regions = sorted({path for path, _, _ in planned})
    found: Capture = capture(before, after, args, regions)
    result.tracing, result.trace_failures = found.tracer, found.failures
    for code in result.rules:
        paths = [path for path, _, rules in planned if code in rules]
        result.evidence.append(rule_evidence(code, paths, found.before, found.after))
    whole = [code for code in result.rules if EXPECTATIONS.get(code) and EXPECTATIONS[code].whole_model]
    if whole:  # the model's own class may be planned (a final norm): its region is the changed lines
        regions = [path for path in regions if path]
    regions += reconfigured(before, after, changed.keywords)
    if not found.is_graph:
        result.outside_note = "not compared (no graph: the eager record has no shapes)"
    else:
        result.outside = outside_diff(found.before, found.after, regions, changed)
        result.outside_lines = bool(changed)


def _numerics(result: Verification, sides: tuple[Builder, Builder], before, after, args: list[tuple],
              planned: list, options: VerifyOptions) -> None:
    # an unknown rule (plan from a newer tf-migrate) is held to the strictest standard
    exact_rules = {code for code, eq in result.rules.items()
                   if eq not in (Equivalence.COMPATIBLE.value, Equivalence.RETRAIN.value)}
    exact = exact_rules == set(result.rules)
    if any(EXPECTATIONS[code].whole_model for code in set(result.rules) - exact_rules if code in EXPECTATIONS):
        exact_rules = set()  # TFM201/TFM401 change classes their plan does not name: no instance is held exact
    states = before.state_dict(), after.state_dict()
    models = {torch.float32: (before, after)}
    models[torch.float64] = tuple(side.with_state(state, torch.float64) for side, state in zip(sides, states))
    # an original that rounds to float32 on purpose, even in float64, is judged at float32 tolerances there
    result.narrowed = narrowings(models[torch.float64][0], cast_floats(args[0], torch.float64))
    loose = numerics.tolerances(torch.float32, options.rtol, options.atol)
    for dtype, (old, new) in models.items():
        rtol, atol = numerics.tolerances(dtype, options.rtol, options.atol)
        wide = dtype == torch.float64 and bool(result.narrowed)
        for index, arg in enumerate(args):
            if exact:
                result.comparisons.append(numerics.compare_outputs(old, new, arg, dtype, index, options.rtol, options.atol,
                                                                   float32_tolerances=wide))
            elif dtype == torch.float32:
                result.comparisons.append(numerics.check_outputs_sane(old, new, arg, index))
        relaxed = {path: loose for path, _, _ in planned if wide and narrowed_within(path, result.narrowed)}
        result.instances += compare_instances(old, new, planned, args, dtype, rtol, atol, exact_rules, relaxed)
    if planned:
        paths = [path for path, _, _ in planned]
        for dtype in LOW_PRECISION:
            old, new = (side.with_state(state, dtype) for side, state in zip(sides, states))
            result.low_precision += low_precision(models[torch.float64][0], old, new, paths, args, dtype)
    _localise(result, models, args, options)


def _localise(result: Verification, models: dict, args: list[tuple], options: VerifyOptions) -> None:
    failed = next((c for c in result.comparisons if not c.ok and c.dtype in ("float32", "float64")), None)
    dtype = getattr(torch, failed.dtype) if failed else None
    rtol, atol = numerics.tolerances(dtype or torch.float32, options.rtol, options.atol)
    if failed is not None and not any(eq in ("compatible", "retrain") for eq in result.rules.values()):
        old, new = models[dtype]
        result.divergence = first_divergence(old, new, cast_floats(args[failed.input_index], dtype), rtol, atol)
    bad = next((c for c in result.instances if not c.ok), None)
    if bad is None:
        return
    from tf_migrate.verify.nodes import first_node

    dtype = getattr(torch, bad.dtype)
    rtol, atol = numerics.tolerances(dtype, options.rtol, options.atol)
    old, new = models[dtype]
    old_module, new_module = old.get_submodule(bad.path), new.get_submodule(bad.path)
    calls = record_calls(old, [bad.path], [cast_floats(a, dtype) for a in args])[bad.path]
    for call in calls:
        with torch.no_grad():
            old_out, out, _ = paired_tensors(call.raw, new_module(*call.args, **call.kwargs))
        if not numerics.compare_tensor_lists(old_out, out, rtol, atol).ok:
            result.first_node = f"{bad.path}: " + first_node(old_module, new_module, call.args, call.kwargs, rtol, atol)
            return


def _judge(result: Verification) -> None:
    load = result.load
    if not load.ok:
        result.failures.append("the mapped checkpoint does not load strictly")
    for evidence in result.evidence:
        if not evidence.ok:
            result.failures.append(f"{evidence.rule}: the structural change is not there")
    if result.outside is not None and not result.outside.ok:
        result.failures.append(f"the graphs differ outside the migrated modules ({result.outside.first})")
    for c in result.comparisons:
        if not c.ok:
            result.failures.append(f"input {c.input_index} in {c.dtype}: outputs differ"
                                   + (f" ({c.problem})" if c.problem else ""))
    for check in result.instances:
        if not check.ok:
            result.failures.append(f"{check.path} ({check.cls}) in {check.dtype}: its output differs on its own inputs"
                                   + (f" ({check.problem})" if check.problem else ""))
    if result.divergence is not None:
        result.failures.append(f"first diverging submodule: {result.divergence.path}")
    if result.first_node:
        result.failures.append(f"first diverging node: {result.first_node}")
