"""Turning recognised feed-forwards (migrate/ffn.py) into TFM301 fixes and checkpoint plans."""

from __future__ import annotations

from typing import Any, Mapping

import libcst as cst

from tf_migrate.analysis.ffn import FeedForward, SequentialFeedForward
from tf_migrate.rules.swiglu.gated import (
    GATE_FUNCTIONS, HELPER_NAMES, Unsupported, code_of, gate_name, gated_product, helper_class,
    linear_bias, linear_features, linear_keys, matched_hidden, parameter_shape, renamed_copy,
)
from tf_migrate.analysis.dataflow import binds, read_names
from tf_migrate.analysis.imports import FUNCTIONAL, imports_bound_by, reference
from tf_migrate.analysis.string_refs import naming_strings
from tf_migrate.plan import ClassPlan, NewKey
from tf_migrate.engine.rule import Fix

_NO_PARENS = (cst.Arg, cst.Assign, cst.AnnAssign, cst.Return)


class FixWriter:
    def __init__(self, ctx, code: str, settings: Mapping[str, Any]) -> None:
        self.ctx, self.code = ctx, code
        self.kind, self.hidden, self.multiple = settings["ffn"], settings["hidden"], settings["multiple-of"]
        self.functional, self.import_ = reference(ctx, FUNCTIONAL, "F")
        self.helper_inserted = any(isinstance(s, cst.ClassDef) and s.name.value == HELPER_NAMES[self.kind]
                                   for s in ctx.module.body)

    def _fix(self, node, message: str, replacements, plan: ClassPlan, imports=()) -> Fix:
        details = [f"renamed {len(plan.renamed)} keys"] if plan.renamed else []
        details += [f"dropped {len(plan.dropped)} keys"] if plan.dropped else ["old weights keep their place"]
        details.append("new: " + ", ".join(k.key for k in plan.new))
        message = f"{message} ({self.kind}, hidden={self.hidden}; {'; '.join(details)}; retrain)"
        return Fix(self.ctx.line(node), message, replacements,
                   plans=[plan], imports=list(imports), maybe_unused_imports=self._freed)

    def chain(self, cls, ffn: FeedForward) -> Fix:
        """`act(first(x))` -> `silu(first(x)) * gate(x)`, plus the gate's constructor."""
        for node, name in naming_strings(self.ctx, [ffn.first.weight, ffn.second.weight]):
            raise Unsupported(f"the string {self.ctx.code(node)} on line {self.ctx.line(node)} names "
                              f"`{name}`: the new gate projection would be missing beside it (a "
                              "tensor-parallel plan, LoRA targets or key list); add it by hand")
        self._freed = imports_bound_by(self.ctx, [ffn.activation.func])
        plan = ClassPlan(self.ctx.path, cls.qualname, [self.code])
        hoisting = self._hoist(ffn) if ffn.hoist_before is not None else {}
        taken = lambda n: n in cls.submodules or any(cls.self_references(n))  # noqa: E731
        if ffn.first.raw:
            replacements, gate = self._raw(cls, ffn, plan, taken)
        else:
            replacements, gate = self._linear(cls, ffn, plan, taken)
        parent = self.ctx.parents.get(ffn.activation)
        replacements[ffn.activation] = gated_product(
            ffn.activation, f"{self.functional}.{GATE_FUNCTIONS[self.kind]}", ffn.gate_input, gate,
            parenthesize=not isinstance(parent, _NO_PARENS))
        replacements.update(self._unused_activation_module(cls, ffn))
        replacements.update(hoisting)
        return self._fix(ffn.activation, f"feed-forward {ffn.first.weight}/{ffn.second.weight} -> gated",
                         replacements, plan, [self.import_] if self.import_ else [])

    def _hoist(self, ffn: FeedForward) -> dict:
        """Bind the FFN input (`self.norm(x)`) to a fresh local before the statement, use it twice."""
        function = ffn.hoist_before
        while function is not None and not isinstance(function, cst.FunctionDef):
            function = self.ctx.parents.get(function)
        used = read_names(function) | {n for n in ("h", "h_ffn") if binds(function, n)}
        name = next(n for n in ("h", "h_ffn", "ffn_input") if n not in used)
        binding = cst.parse_statement(f"{name} = {code_of(ffn.first.input)}\n")
        local = cst.Name(name)
        ffn.gate_input = ffn.gate_input.deep_replace(ffn.first.input, local)
        ffn.first.node = ffn.first.node.deep_replace(ffn.first.input, local)
        ffn.first.input = local

        def insert(updated: cst.BaseStatement) -> cst.FlattenSentinel:
            return cst.FlattenSentinel([binding.with_changes(leading_lines=updated.leading_lines),
                                        updated.with_changes(leading_lines=())])

        return {ffn.hoist_before: insert}

    def _linear(self, cls, ffn: FeedForward, plan: ClassPlan, taken):
        first, second = cls.submodules[ffn.first.weight], cls.submodules[ffn.second.weight]
        bias, (in_, hidden) = linear_bias(first.call), linear_features(first.call)
        second_in, _ = linear_features(second.call)
        name = gate_name(first.name, second.name, taken)
        gate = cst.parse_expression(f"self.{name}({code_of(ffn.first.input)})")
        if self.hidden == "same":
            new = cst.parse_statement(f"self.{name} = {code_of(first.call)}\n")
            plan.new = linear_keys(f"{name}.", code_of(in_), code_of(hidden), bias)
            return {first.statement: cst.FlattenSentinel([first.statement, new])}, gate
        if code_of(second_in) != code_of(hidden):
            raise Unsupported(f"the hidden sizes of `{first.name}` ({code_of(hidden)}) and "
                              f"`{second.name}` ({code_of(second_in)}) are spelled differently")
        size = matched_hidden(code_of(hidden), self.multiple)
        local = "ffn_hidden" if "ffn_hidden" not in code_of(cls.methods["__init__"]) else "ffn_hidden_"
        size_line = cst.parse_statement(
            f"{local} = {size}  # 2/3 of {code_of(hidden)}, rounded up to a multiple of {self.multiple}\n")
        resized = first.statement.deep_replace(hidden, cst.Name(local))
        new = renamed_copy(resized, {first.name: name}).with_changes(leading_lines=())
        statements = [size_line.with_changes(leading_lines=first.statement.leading_lines),
                      resized.with_changes(leading_lines=()), new]
        second_bias = linear_bias(second.call)
        plan.dropped = [k.key for k in linear_keys(f"{first.name}.", "", "", bias)
                        + linear_keys(f"{second.name}.", "", "", second_bias)]
        plan.new = (linear_keys(f"{first.name}.", code_of(in_), size, bias)
                    + linear_keys(f"{second.name}.", size, code_of(in_), second_bias)
                    + linear_keys(f"{name}.", code_of(in_), size, bias))
        return {first.statement: cst.FlattenSentinel(statements), second_in: cst.Name(local)}, gate

    def _raw(self, cls, ffn: FeedForward, plan: ClassPlan, taken):
        if self.hidden != "same":
            raise Unsupported("hidden=param-matched is not supported for raw-parameter FFNs "
                              "(the sizes live inside the parameter constructors); use hidden=same")
        names = {ffn.first.weight: gate_name(ffn.first.weight, ffn.second.weight, taken)}
        if ffn.first.bias:
            names[ffn.first.bias] = gate_name(ffn.first.bias, ffn.second.bias or "", taken)
        replacements = {}
        for old, new in names.items():
            statement = cls.submodules[old].statement
            copy = renamed_copy(statement, {old: new}).with_changes(leading_lines=())
            replacements[statement] = cst.FlattenSentinel([statement, copy])
            value = cls.submodules[old].call
            plan.new.append(NewKey(new, "default", parameter_shape(value), f"as {old}: {code_of(value)}"))
        return replacements, renamed_copy(ffn.first.node, names)

    def _unused_activation_module(self, cls, ffn: FeedForward) -> dict:
        func = ffn.activation.func
        sub = cls.submodule_of(func)
        if sub is not None and len(list(cls.self_references(sub.name))) == 2:
            return {sub.statement: cst.RemoveFromParent()}
        return {}

    def sequential(self, ffn: SequentialFeedForward) -> Fix:
        """`nn.Sequential(Linear, act, [Dropout], Linear, [Dropout])` -> the gated helper module."""
        self._freed = []
        bias = linear_bias(ffn.first)
        if linear_bias(ffn.second) != bias:
            raise Unsupported("the two Linears of the nn.Sequential FFN disagree on bias")
        (in_, hidden), (_, second_out) = linear_features(ffn.first), linear_features(ffn.second)
        if code_of(second_out) != code_of(in_):
            raise Unsupported(f"the FFN maps {code_of(in_)} to {code_of(second_out)}: the gated "
                              "module needs the same input and output size")
        nn, nn_import = reference(self.ctx, "torch.nn", "nn")
        size = code_of(hidden) if self.hidden == "same" else matched_hidden(code_of(hidden), self.multiple)
        args = [code_of(in_), size]
        if ffn.dropout is not None:
            args.append(f"dropout={code_of(ffn.dropout)}")
        if not bias:
            args.append("bias=False")
        call = f"{HELPER_NAMES[self.kind]}({', '.join(args)})"
        if ffn.trailing is not None:
            call = f"{nn}.Sequential({call}, {code_of(ffn.trailing)})"
        replacements = {ffn.call: cst.parse_expression(call)}
        replacements.update(self._helper(ffn.cls, nn))
        plan = self._sequential_plan(ffn, code_of(in_), size, bias)
        imports = [i for i in (self.import_, nn_import) if i]
        return self._fix(ffn.call, f"nn.Sequential feed-forward `{ffn.attribute}` -> "
                         f"{HELPER_NAMES[self.kind]}", replacements, plan, imports)

    def _sequential_plan(self, ffn: SequentialFeedForward, in_: str, size: str, bias: bool) -> ClassPlan:
        plan = ClassPlan(self.ctx.path, ffn.cls.qualname, [self.code])
        base = f"{ffn.attribute}.0." if ffn.trailing is not None else f"{ffn.attribute}."
        old = [f"{ffn.attribute}.{i}." for i in ffn.indices]
        suffixes = ["weight", "bias"] if bias else ["weight"]
        if self.hidden == "same":
            for source, target in zip(old, ("w1.", "w2.")):
                plan.renamed.update({source + s: base + target + s for s in suffixes})
            plan.new = linear_keys(base + "w3.", in_, size, bias)
        else:
            plan.dropped = [o + s for o in old for s in suffixes]
            plan.new = (linear_keys(base + "w1.", in_, size, bias) + linear_keys(base + "w2.", size, in_, bias)
                        + linear_keys(base + "w3.", in_, size, bias))
        return plan

    def _helper(self, cls, nn: str) -> dict:
        """Insert the helper module once per file, before the first class that uses it."""
        if self.helper_inserted:
            return {}
        self.helper_inserted = True
        top = cls.node
        while self.ctx.parents.get(top) is not self.ctx.module:
            top = self.ctx.parents[top]
        helper = helper_class(self.kind, nn, self.functional)

        def insert(updated: cst.ClassDef):
            blank = [cst.EmptyLine(), cst.EmptyLine()]
            return cst.FlattenSentinel([helper.with_changes(leading_lines=updated.leading_lines),
                                        updated.with_changes(leading_lines=blank)])

        return {top: insert}
