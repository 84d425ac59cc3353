"""Elementwise activations as code spells them: which calls apply one, which attributes hold one.

An activation is applied by a torch function (`F.relu(h)`, `F.gelu(h)`, `torch.relu(h)`), a
method (`h.relu()`), a function of the file whose body is an elementwise formula of its one
argument (`def gelu(x): return x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))`), or an attribute of
the module that holds one. An attribute holds one when `__init__` sets it once to an activation
module (`nn.GELU()`, a class of the file whose `forward` is such a formula, `act_layer()` where
the parameter `act_layer` defaults to an activation class and every call of the class in the file
passes an activation class or a parameter that defaults to one), a function above, a choice
between two of them (`F.relu if kind == "relu" else F.gelu`), or an entry of a module-level dict
whose values are all activations (`ACT_FNS[config.act]`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.dataflow import binds
from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nodes import find

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

MODULES = ("torch.nn.ReLU", "torch.nn.GELU")
FUNCTIONS = ("torch.nn.functional.relu", "torch.nn.functional.gelu", "torch.relu")
_METHODS = ("relu",)
# What an elementwise formula may call: torch's pointwise functions and math on constants.
_POINTWISE = {
    f"{prefix}.{name}" for prefix in ("torch", "torch.nn.functional")
    for name in ("tanh", "erf", "sigmoid", "exp", "pow", "sqrt", "relu", "gelu", "silu", "abs")
} | {f"math.{name}" for name in ("sqrt", "pi", "tanh", "erf", "exp", "log")}
_POINTWISE_METHODS = ("tanh", "erf", "sigmoid", "exp", "pow", "sqrt", "relu", "abs", "mul", "add")


def applied_to(ctx: "FileContext", cls: "ModuleClass", node: cst.BaseExpression) -> cst.BaseExpression | None:
    """What `node` applies an activation to, or None when it applies none."""
    if not isinstance(node, cst.Call):
        return None
    positional = [a for a in node.args if a.keyword is None and not a.star]
    if isinstance(node.func, cst.Attribute) and node.func.attr.value in _METHODS and not node.args:
        return node.func.value
    if not positional or node.args[0] is not positional[0]:
        return None
    if ctx.names.callee(node) in FUNCTIONS or (len(node.args) == 1 and _local_function(ctx, node.func)):
        return positional[0].value
    name = self_attribute(node.func)
    if name is not None and len(node.args) == 1 and held_by(ctx, cls, name):
        return positional[0].value
    return None


def held_by(ctx: "FileContext", cls: "ModuleClass", attribute: str) -> bool:
    """Whether `self.<attribute>` holds an activation (set once, in `__init__`)."""
    value = _set_once(cls, attribute)
    return value is not None and _activation_value(ctx, cls, value)


def _set_once(cls: "ModuleClass", attribute: str) -> cst.BaseExpression | None:
    line = setting_line(cls, attribute)
    return line.body[0].value if line is not None else None


def setting_line(cls: "ModuleClass", attribute: str) -> cst.SimpleStatementLine | None:
    """The `self.<attribute> = value` line of `__init__`, when it is the class's only assignment
    of the attribute and alone on its line."""
    init = cls.methods.get("__init__")
    if init is None:
        return None
    everywhere = [small for line in _lines(cls.node) for small in line.body
                  if isinstance(small, cst.Assign) and any(self_attribute(t.target) == attribute for t in small.targets)]
    in_init = [line for line in _lines(init) if len(line.body) == 1 and isinstance(line.body[0], cst.Assign)
               and len(line.body[0].targets) == 1 and self_attribute(line.body[0].targets[0].target) == attribute]
    return in_init[0] if len(everywhere) == 1 and len(in_init) == 1 else None


def _lines(node: cst.CSTNode) -> list[cst.SimpleStatementLine]:
    return find(node, lambda n: isinstance(n, cst.SimpleStatementLine))


def _activation_value(ctx, cls, value: cst.BaseExpression) -> bool:
    if isinstance(value, cst.IfExp):
        return _activation_value(ctx, cls, value.body) and _activation_value(ctx, cls, value.orelse)
    if isinstance(value, cst.Subscript):
        return _activation_table(ctx, value.value)
    if isinstance(value, cst.Call):
        return _activation_module(ctx, cls, value)
    return _function_reference(ctx, value)


def _function_reference(ctx, value: cst.BaseExpression) -> bool:
    return ctx.names.imported(value) in FUNCTIONS or _local_function(ctx, value)


def _activation_module(ctx, cls, call: cst.Call) -> bool:
    """`nn.GELU()`, `GELU()` (an elementwise class of the file), `act_layer()` (see the module doc)."""
    if ctx.names.callee(call) in MODULES:
        return True
    if call.args:
        return False
    return _local_class(ctx, call.func) or (
        isinstance(call.func, cst.Name) and _activation_parameter(ctx, cls, call.func.value))


def _class_reference(ctx, value: cst.BaseExpression | None) -> bool:
    return value is not None and (ctx.names.imported(value) in MODULES or _local_class(ctx, value))


def _activation_parameter(ctx, cls, name: str) -> bool:
    """`__init__(..., act_layer=nn.GELU)`, and every call of the class in the file passes an
    activation class (or a parameter of the caller that defaults to one) or nothing."""
    init = cls.methods["__init__"]
    params = [p for p in init.params.params + init.params.kwonly_params if p.name.value == name]
    if len(params) != 1 or not _class_reference(ctx, params[0].default):
        return False
    position = (init.params.params.index(params[0]) - 1) if params[0] in init.params.params else None
    for call in _calls_of(ctx, cls.node.name.value):
        if any(a.star for a in call.args):
            return False
        passed = [a.value for i, a in enumerate(a for a in call.args if a.keyword is None) if i == position]
        passed += [a.value for a in call.args if a.keyword is not None and a.keyword.value == name]
        if passed and not (_class_reference(ctx, passed[0]) or _forwarded_parameter(ctx, call, passed[0])):
            return False
    return True


def _forwarded_parameter(ctx, call: cst.Call, value: cst.BaseExpression) -> bool:
    if not isinstance(value, cst.Name):
        return False
    function = ctx.parents.get(call)
    while function is not None and not isinstance(function, cst.FunctionDef):
        function = ctx.parents.get(function)
    if function is None:
        return False
    params = [p for p in function.params.params + function.params.kwonly_params if p.name.value == value.value]
    if len(params) != 1 or not _class_reference(ctx, params[0].default):
        return False
    rebound = [n for n in _lines(function.body) for s in n.body
               if isinstance(s, (cst.Assign, cst.AugAssign, cst.AnnAssign)) and binds(s, value.value)]
    return not rebound


def _calls_of(ctx, name: str) -> list[cst.Call]:
    return ctx.memo(f"activations.calls.{name}", lambda: find(
        ctx.module, lambda n: isinstance(n, cst.Call) and isinstance(n.func, cst.Name) and n.func.value == name))


def _activation_table(ctx, value: cst.BaseExpression) -> bool:
    """A module-level `NAME = {"relu": F.relu, "gelu": gelu, ...}` bound once (activation classes
    count too: whatever the entry, the gated rewrite replaces the call)."""
    if not isinstance(value, cst.Name) or not _module_level(ctx, value):
        return False
    bound = _assignments(ctx, value.value)
    if len(bound) != 1 or not isinstance(bound[0], cst.Dict) or not bound[0].elements:
        return False
    return all(isinstance(e, cst.DictElement) and (_function_reference(ctx, e.value) or _class_reference(ctx, e.value))
               for e in bound[0].elements)


def _module_level(ctx, name: cst.Name) -> bool:
    """`name` reads a binding of the module: not imported, not a builtin, bound by no enclosing def."""
    if ctx.names.imported(name) is not None or ctx.names.builtin(name) is not None:
        return False
    node = ctx.parents.get(name)
    while node is not None:
        if isinstance(node, (cst.FunctionDef, cst.Lambda)) and binds(node.params, name.value):
            return False
        if isinstance(node, cst.FunctionDef) and binds(node.body, name.value):
            return False
        node = ctx.parents.get(node)
    return True


def _top_level(ctx, name: str, kind: type) -> list[cst.CSTNode]:
    """The module-level defs (or classes) named `name`; none when an assignment also binds it."""
    found = [s for s in ctx.module.body if isinstance(s, kind) and s.name.value == name]
    return found if not _assignments(ctx, name) else []


def _assignments(ctx, name: str) -> list[cst.BaseExpression]:
    return [s.value for line in ctx.module.body if isinstance(line, cst.SimpleStatementLine)
            for s in line.body if isinstance(s, cst.Assign) and len(s.targets) == 1
            and isinstance(s.targets[0].target, cst.Name) and s.targets[0].target.value == name]


def _local_function(ctx, value: cst.BaseExpression) -> bool:
    """A file-level `def f(x): return <elementwise formula of x>`, read through this name."""
    if not isinstance(value, cst.Name) or not _module_level(ctx, value):
        return False
    defs = _top_level(ctx, value.value, cst.FunctionDef)
    if len(defs) != 1 or _top_level(ctx, value.value, cst.ClassDef):
        return False
    return ctx.memo(f"activations.function.{value.value}", lambda: _elementwise_def(ctx, defs[0], 0))


def _local_class(ctx, value: cst.BaseExpression) -> bool:
    """A file-level `class GELU(nn.Module)` whose only work is `forward(self, x)`: an elementwise
    formula of x (an `__init__` may only call `super().__init__()`)."""
    if not isinstance(value, cst.Name) or not _module_level(ctx, value):
        return False
    classes = _top_level(ctx, value.value, cst.ClassDef)
    if len(classes) != 1 or _top_level(ctx, value.value, cst.FunctionDef):
        return False
    return ctx.memo(f"activations.class.{value.value}", lambda: _elementwise_class(ctx, classes[0]))


def _elementwise_class(ctx, node: cst.ClassDef) -> bool:
    methods = {s.name.value: s for s in node.body.body if isinstance(s, cst.FunctionDef)}
    others = [s for s in node.body.body if not isinstance(s, cst.FunctionDef) and not _docstring(s)]
    if others or "forward" not in methods or set(methods) - {"forward", "__init__"}:
        return False
    if "__init__" in methods and not _only_super_init(methods["__init__"]):
        return False
    return _elementwise_def(ctx, methods["forward"], 1)


def _only_super_init(init: cst.FunctionDef) -> bool:
    body = [s for s in init.body.body if not _docstring(s)]
    return len(init.params.params) == 1 and len(body) == 1 and "super(" in cst.Module([]).code_for_node(body[0]) \
        and "self." not in cst.Module([]).code_for_node(body[0])


def _docstring(statement: cst.CSTNode) -> bool:
    return (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1
            and isinstance(statement.body[0], cst.Expr) and isinstance(statement.body[0].value, cst.SimpleString))


def _elementwise_def(ctx, function: cst.FunctionDef, skip: int) -> bool:
    """`def f([self,] x): [docstring] return <formula of x>` (no defaults, no decorators)."""
    params = function.params
    if (function.decorators or params.star_arg != cst.MaybeSentinel.DEFAULT or params.kwonly_params
            or params.star_kwarg or len(params.params) != skip + 1 or params.params[skip].default is not None):
        return False
    body = [s for s in function.body.body if not _docstring(s)] if isinstance(function.body, cst.IndentedBlock) else []
    if len(body) != 1 or not isinstance(body[0], cst.SimpleStatementLine) or len(body[0].body) != 1:
        return False
    ret = body[0].body[0]
    if not isinstance(ret, cst.Return) or ret.value is None:
        return False
    return _formula(ctx, ret.value, params.params[skip].name.value, reads_input=[False])


def _formula(ctx, node: cst.BaseExpression, x: str, reads_input: list[bool]) -> bool:
    ok = _formula_node(ctx, node, x, reads_input)
    return ok and reads_input[0]


def _formula_node(ctx, node: cst.BaseExpression, x: str, reads: list[bool]) -> bool:
    recurse = lambda n: _formula_node(ctx, n, x, reads)  # noqa: E731
    if isinstance(node, cst.Name):
        reads[0] = reads[0] or node.value == x
        return node.value == x
    if isinstance(node, (cst.Integer, cst.Float)):
        return True
    if isinstance(node, cst.BinaryOperation):
        return recurse(node.left) and recurse(node.right)
    if isinstance(node, cst.UnaryOperation):
        return recurse(node.expression)
    if isinstance(node, cst.Attribute):
        return ctx.names.imported(node) in _POINTWISE
    if isinstance(node, cst.Call):
        if any(a.star or a.keyword is not None for a in node.args):
            return False
        if isinstance(node.func, cst.Attribute) and ctx.names.imported(node.func) is None:
            if node.func.attr.value not in _POINTWISE_METHODS:
                return False
            return recurse(node.func.value) and all(recurse(a.value) for a in node.args)
        return ctx.names.imported(node.func) in _POINTWISE and all(recurse(a.value) for a in node.args)
    return False
