"""Turning recognised feed-forwards (migrate/ffn.py) into TFM301 fixes and checkpoint plans."""

from __future__ import annotations

from typing import Any, Mapping

import libcst as cst

from tf_migrate.analysis.ffn import FeedForward, SequentialFeedForward
from tf_migrate.rules.swiglu.gated import (
    CONV1D, GATE_FUNCTIONS, HELPER_NAMES, Unsupported, code_of, gate_name, gated_product, helper_class,
    linear_bias, linear_features, linear_keys, matched_hidden, parameter_shape, renamed_copy,
)
from tf_migrate.analysis.activations import activation_of
from tf_migrate.analysis.dataflow import binds, read_names
from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nodes import find
from tf_migrate.analysis.imports import FUNCTIONAL, imports_bound_by, reference
from tf_migrate.analysis.string_refs import naming_strings
from tf_migrate.plan import ClassPlan, NewKey
from tf_migrate.engine.rule import Fix

_GELUS = frozenset({"gelu", "gelu_tanh", "gelu_sigmoid"})
_NO_PARENS = (cst.Arg, cst.Assign, cst.AnnAssign, cst.Return)


class FixWriter:
    def __init__(self, ctx, code: str, settings: Mapping[str, Any]) -> None:
        self.ctx, self.code = ctx, code
        self.option, self.hidden, self.multiple = settings["ffn"], settings["hidden"], settings["multiple-of"]
        self.kind = "geglu" if self.option == "geglu" else "swiglu"  # of the fix being written
        self.functional, self.import_ = reference(ctx, FUNCTIONAL, "F")
        self.helpers_inserted = {kind for kind, name in HELPER_NAMES.items()
                                 if any(isinstance(s, cst.ClassDef) and s.name.value == name for s in ctx.module.body)}

    def _choose_kind(self, cls, activation: cst.CSTNode) -> None:
        """`ffn=match`: GeGLU where the original applied a GELU (any approximation), else SwiGLU."""
        if self.option != "match":
            return
        found = activation_of(self.ctx, cls, activation)
        self.kind = "geglu" if found is not None and found.kinds <= _GELUS else "swiglu"

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
        self._choose_kind(cls, ffn.activation)
        self._freed = imports_bound_by(self.ctx, [ffn.activation.func])
        plan = ClassPlan(self.ctx.path, cls.qualname, [self.code])
        hoisting = self._hoist(ffn) if ffn.hoist_before is not None else {}
        taken = lambda n: n in cls.submodules or any(cls.self_references(n))  # noqa: E731
        if ffn.first.raw:
            replacements, gate = self._raw(cls, ffn, plan, taken)
        else:
            replacements, gate = self._linear(cls, ffn, plan, taken)
        return self._gated(cls, ffn, plan, replacements, gate, hoisting,
                           f"feed-forward {ffn.first.weight}/{ffn.second.weight} -> gated")

    def split(self, cls, ffn: FeedForward, halves) -> Fix:
        """The up half of an FFN split over two classes (`act(self.dense(x))` returned; the down
        projection is `halves.down`'s): gated here, the down half unchanged."""
        for node, name in naming_strings(self.ctx, [ffn.first.weight]):
            raise Unsupported(f"the string {self.ctx.code(node)} on line {self.ctx.line(node)} names "
                              f"`{name}`: the new gate projection would be missing beside it; add it by hand")
        if self.hidden != "same":
            raise Unsupported("hidden=param-matched is not supported for an FFN split over two classes; use hidden=same")
        self._choose_kind(cls, ffn.activation)
        self._freed = imports_bound_by(self.ctx, [ffn.activation.func])
        plan = ClassPlan(self.ctx.path, cls.qualname, [self.code])
        hoisting = self._hoist(ffn) if ffn.hoist_before is not None else {}
        first = cls.submodules[ffn.first.weight]
        name = gate_name(first.name, halves.second, lambda n: n in cls.submodules or any(cls.self_references(n)))
        in_, hidden = linear_features(first.call)
        plan.new = linear_keys(f"{name}.", code_of(in_), code_of(hidden), linear_bias(first.call))
        new = cst.parse_statement(f"self.{name} = {code_of(first.call)}\n")
        replacements = {first.statement: cst.FlattenSentinel([first.statement, new])}
        gate = cst.parse_expression(f"self.{name}({code_of(ffn.first.input)})")
        return self._gated(cls, ffn, plan, replacements, gate, hoisting,
                           f"feed-forward {ffn.first.weight} (down projection `{halves.second}` in "
                           f"{halves.down}, wired by {halves.parent}) -> gated")

    def _gated(self, cls, ffn: FeedForward, plan: ClassPlan, replacements: dict, gate, hoisting: dict,
               message: str) -> Fix:
        function = f"{self.functional}.{GATE_FUNCTIONS[self.kind]}"
        if ffn.gate_at_first:
            parent = self.ctx.parents.get(ffn.first.node)
            replacements[ffn.first.node] = gated_product(
                ffn.first.node, function, ffn.first.node, gate, parenthesize=not isinstance(parent, _NO_PARENS))
            replacements.update(self._activation_dropped(ffn))
        else:
            parent = self.ctx.parents.get(ffn.activation)
            replacements[ffn.activation] = gated_product(
                ffn.activation, function, ffn.gate_input, gate, parenthesize=not isinstance(parent, _NO_PARENS))
        replacements.update(self._unused_activation_module(cls, ffn))
        replacements.update(hoisting)
        return self._fix(ffn.activation, message, replacements, plan, [self.import_] if self.import_ else [])

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
        if ffn.first.transposed is not None:
            return self._transposed(cls, ffn, plan, taken)
        conv = first.callee == CONV1D
        if conv != (second.callee == CONV1D):
            raise Unsupported(f"`{first.name}` and `{second.name}` are not the same kind of layer")
        bias, (in_, hidden) = linear_bias(first.call, conv), linear_features(first.call, conv)
        second_in, _ = linear_features(second.call, conv)
        name = gate_name(first.name, second.name, taken)
        gate = cst.parse_expression(f"self.{name}({code_of(ffn.first.input)})")
        if self.hidden == "same":
            new = cst.parse_statement(f"self.{name} = {code_of(first.call)}\n")
            plan.new = linear_keys(f"{name}.", code_of(in_), code_of(hidden), bias, conv)
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
        second_bias = linear_bias(second.call, conv)
        plan.dropped = [k.key for k in linear_keys(f"{first.name}.", "", "", bias)
                        + linear_keys(f"{second.name}.", "", "", second_bias)]
        plan.new = (linear_keys(f"{first.name}.", code_of(in_), size, bias, conv)
                    + linear_keys(f"{second.name}.", size, code_of(in_), second_bias, conv)
                    + linear_keys(f"{name}.", code_of(in_), size, bias, conv))
        return {first.statement: cst.FlattenSentinel(statements), second_in: cst.Name(local)}, gate

    def _transposed(self, cls, ffn: FeedForward, plan: ClassPlan, taken):
        """Conv1D-style projections: the gate is built like the first (`Conv1D(nf, nx)`); its
        weight is stored (in, out) and it always has a bias."""
        if self.hidden != "same":
            raise Unsupported("hidden=param-matched is not supported for Conv1D-style projections "
                              "(weights stored transposed); use hidden=same")
        first = cls.submodules[ffn.first.weight]
        name = gate_name(first.name, cls.submodules[ffn.second.weight].name, taken)
        layer = ffn.first.transposed
        in_, hidden = code_of(layer.in_features), code_of(layer.out_features)
        new = cst.parse_statement(f"self.{name} = {code_of(first.call)}\n")
        note = f"as {first.name}: {code_of(first.call)} (weight stored (in, out))"
        plan.new = [NewKey(f"{name}.weight", "default", [in_, hidden], note),
                    NewKey(f"{name}.bias", "default", [hidden], note)]
        gate = cst.parse_expression(f"self.{name}({code_of(ffn.first.input)})")
        return {first.statement: cst.FlattenSentinel([first.statement, new])}, gate

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

    def _activation_dropped(self, ffn: FeedForward) -> dict:
        """The activation became part of the first projection's statement: `x = self.act(x)` goes,
        `h = self.act(x)` becomes `h = x`."""
        assign = self.ctx.parents.get(ffn.activation)
        line = self.ctx.parents.get(assign)
        if (isinstance(assign, cst.Assign) and len(assign.targets) == 1 and isinstance(ffn.gate_input, cst.Name)
                and isinstance(assign.targets[0].target, cst.Name)
                and assign.targets[0].target.value == ffn.gate_input.value and len(line.body) == 1):
            return {line: cst.RemoveFromParent()}
        return {ffn.activation: ffn.gate_input}

    def _unused_activation_module(self, cls, ffn: FeedForward) -> dict:
        name = self_attribute(ffn.activation.func)
        line = setting_line(cls, name) if name else None
        if line is not None and len(list(cls.self_references(name))) == 2:
            self._freed = self._freed + imports_bound_by(self.ctx, [line.body[0].value])
            return {line: cst.RemoveFromParent(), **unused_relative_imports(self.ctx, line)}
        return {}

    def sequential(self, ffn: SequentialFeedForward) -> Fix:
        """`nn.Sequential(Linear, act, [Dropout], Linear, [Dropout])` -> the gated helper module."""
        self._choose_kind(ffn.cls, ffn.call.args[ffn.indices[0] + 1].value)
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
        if ffn.trailing is not None or ffn.norm is not None:
            parts = [code_of(ffn.norm)] if ffn.norm is not None else []
            parts += [call] + ([code_of(ffn.trailing)] if ffn.trailing is not None else [])
            call = f"{nn}.Sequential({', '.join(parts)})"
        replacements = {ffn.call: cst.parse_expression(call), **unused_relative_imports(self.ctx, ffn.call)}
        replacements.update(self._helper(ffn.cls, nn))
        plan = self._sequential_plan(ffn, code_of(in_), size, bias)
        imports = [i for i in (self.import_, nn_import) if i]
        return self._fix(ffn.call, f"nn.Sequential feed-forward `{ffn.attribute}` -> "
                         f"{HELPER_NAMES[self.kind]}", replacements, plan, imports)

    def _sequential_plan(self, ffn: SequentialFeedForward, in_: str, size: str, bias: bool) -> ClassPlan:
        plan = ClassPlan(self.ctx.path, ffn.cls.qualname, [self.code])
        base = f"{ffn.attribute}.{1 if ffn.norm is not None else 0}." \
            if ffn.trailing is not None or ffn.norm is not None else f"{ffn.attribute}."
        old = [f"{ffn.attribute}.{i}." + (f"{ffn.inner}." if ffn.inner else "") for i in ffn.indices]
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
        if self.kind in self.helpers_inserted:
            return {}
        self.helpers_inserted.add(self.kind)
        top = cls.node
        while self.ctx.parents.get(top) is not self.ctx.module:
            top = self.ctx.parents[top]
        helper = helper_class(self.kind, nn, self.functional)

        def insert(updated: cst.ClassDef):
            blank = [cst.EmptyLine(), cst.EmptyLine()]
            return cst.FlattenSentinel([helper.with_changes(leading_lines=updated.leading_lines),
                                        updated.with_changes(leading_lines=blank)])

        return {top: insert}


def setting_line(cls, attribute: str) -> cst.SimpleStatementLine | None:
    """The `self.<attribute> = value` line of `__init__`, when it is the class's only assignment
    of the attribute and alone on its line."""
    init = cls.methods.get("__init__")
    if init is None:
        return None
    lines = lambda node: find(node, lambda n: isinstance(n, cst.SimpleStatementLine))  # noqa: E731
    everywhere = [small for line in lines(cls.node) for small in line.body if isinstance(small, cst.Assign)
                  and any(self_attribute(t.target) == attribute for t in small.targets)]
    in_init = [line for line in lines(init) if len(line.body) == 1 and isinstance(line.body[0], cst.Assign)
               and len(line.body[0].targets) == 1 and self_attribute(line.body[0].targets[0].target) == attribute]
    return in_init[0] if len(everywhere) == 1 and len(in_init) == 1 else None


def unused_relative_imports(ctx, removed: cst.CSTNode) -> dict:
    """`from .gelu import GELU` (or `from . import helpers`) whose names only `removed` read: the
    replacements that drop them (libcst's import remover skips relative imports). A name also
    listed in a string (`__all__`) or read anywhere else keeps its import."""
    read = read_names(removed)
    everywhere: dict[str, int] = {}
    for node in find(ctx.module, lambda n: isinstance(n, cst.Name)):
        everywhere[node.value] = everywhere.get(node.value, 0) + 1
    inside: dict[str, int] = {}
    for node in find(removed, lambda n: isinstance(n, cst.Name)):
        inside[node.value] = inside.get(node.value, 0) + 1
    strings = {s.evaluated_value for s in find(ctx.module, lambda n: isinstance(n, cst.SimpleString))
               if isinstance(s.evaluated_value, str)}
    replacements = {}
    for line in ctx.module.body:
        if not (isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1
                and isinstance(line.body[0], cst.ImportFrom) and line.body[0].relative
                and not isinstance(line.body[0].names, cst.ImportStar)):
            continue
        statement = line.body[0]
        kept = []
        for alias in statement.names:
            local = alias.asname.name.value if alias.asname else code_of(alias.name)
            # the import binds the name once (`everywhere` counts it there, `inside` does not)
            unused = local in read and everywhere.get(local, 0) == inside.get(local, 0) + 1 + (
                1 if alias.asname else 0) and local not in strings
            if not unused:
                kept.append(alias)
        if len(kept) == len(statement.names):
            continue
        if not kept:
            replacements[line] = cst.RemoveFromParent()
            after = ctx.module.body.index(line) + 1
            if line.leading_lines and after < len(ctx.module.body):  # keep the blank line(s) above it
                following = ctx.module.body[after]
                replacements[following] = lambda updated, blank=line.leading_lines: updated.with_changes(
                    leading_lines=[*blank, *updated.leading_lines])
        else:
            kept[-1] = kept[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            replacements[statement] = statement.with_changes(names=kept)
    return replacements
