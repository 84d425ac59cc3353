"""Is this an elementwise activation, and which? Asked of an application (`act(x)`) or of the
callable it applies, in all the spellings projects use.

`activation_of` answers an `Activation`: the possible kinds (one when known; several for a lookup
table indexed by a config string or a conditional), how it is spelled (`construct`), the tensor
it is applied to, and the parameter that may replace it (`act_layer=nn.GELU` defaults). Kinds:
"relu", "gelu" (exact, erf), "gelu_tanh", "gelu_sigmoid" (x * sigmoid(1.702 x)), "silu",
"sigmoid", "tanh", "mish", "leaky_relu", "elu", "softplus", "relu6", "hardswish", "elementwise"
(elementwise but none of these).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.names import argument, self_attribute
from tf_migrate.analysis.project import Symbol
from tf_migrate.analysis.project.facts import (ACTIVATION_CLASSES, ACTIVATION_FUNCTIONS, ACTIVATION_METHODS,
                                               elementwise_kind)
from tf_migrate.analysis.symbols import init_values, is_parameter, parameter_default, symbols_of

if TYPE_CHECKING:
    from tf_migrate.analysis.modules import ModuleClass
    from tf_migrate.engine.context import FileContext


@dataclass
class Activation:
    kinds: frozenset[str]
    construct: str  # "function", "method", "module", "inline module", "table", "getter", "conditional", ...
    argument: cst.BaseExpression | None = None  # what it is applied to (applications only)
    parameter: str | None = None  # a parameter whose caller may pass another activation
    notes: list[str] = field(default_factory=list)


def activation_of(ctx: "FileContext", cls: "ModuleClass | None", node: cst.CSTNode) -> Activation | None:
    """`node` applied to one tensor (`F.gelu(x)`, `x.relu()`, `self.act(x)`, `nn.GELU()(x)`,
    `ACT2FN[cfg.act](x)`, `gelu(x)`), or a callable / module value (`nn.GELU()`, `F.relu`)."""
    if isinstance(node, cst.Call):
        receiver = _method_receiver(node)
        if receiver is not None:
            return Activation(frozenset({ACTIVATION_METHODS[node.func.attr.value]}), "method", receiver)
        if len(node.args) >= 1 and node.args[0].keyword is None and not node.args[0].star:
            found = _callable(ctx, cls, node.func, _depth=0)
            if found is not None and _kind_arguments_ok(ctx, node, found):
                found.argument = node.args[0].value
                if isinstance(node.func, cst.Call):
                    found.construct = "inline module"
                if found.kinds == {"gelu"} and _tanh_approximate(node):
                    found.kinds = frozenset({"gelu_tanh"})
                return found
    return _callable(ctx, cls, node, _depth=0)


def _method_receiver(call: cst.Call) -> cst.BaseExpression | None:
    func = call.func
    if isinstance(func, cst.Attribute) and func.attr.value in ACTIVATION_METHODS and not call.args \
            and not (isinstance(func.value, cst.Name) and func.value.value == "self"):
        return func.value
    return None


def _kind_arguments_ok(ctx, call: cst.Call, found: Activation) -> bool:
    """Extra arguments of a functional activation are options (`inplace`, `approximate`), not tensors."""
    return all(arg.keyword is not None and arg.keyword.value in ("inplace", "approximate", "negative_slope")
               for arg in call.args[1:])


def _tanh_approximate(call: cst.Call) -> bool:
    value = argument(call, 99, "approximate")
    return isinstance(value, cst.SimpleString) and value.evaluated_value == "tanh"


def _callable(ctx: "FileContext", cls, node: cst.CSTNode, _depth: int) -> Activation | None:
    """What calling `node` on a tensor computes, when it is an activation."""
    if _depth > 4:
        return None
    if isinstance(node, cst.Call):  # a module built here: nn.GELU(), act_layer(), get_activation("gelu")
        return _instance(ctx, cls, node, _depth)
    if isinstance(node, cst.IfExp):
        both = [_callable(ctx, cls, branch, _depth + 1) for branch in (node.body, node.orelse)]
        return _union(both, "conditional")
    if isinstance(node, cst.Subscript):
        return _table(ctx, node)
    attribute = self_attribute(node)
    if attribute is not None and cls is not None:
        values = init_values(cls, attribute)
        found = [_callable(ctx, cls, v, _depth + 1) for v in values]
        found = [f if f is not None else _configured(ctx, v, values) for f, v in zip(found, values)]
        result = _union(found, None)
        if result is not None and len(values) == 1:
            result.construct = f"module attribute ({result.construct})"
        return result
    kinds = _symbols_kinds(ctx, symbols_of(ctx, node), instance=False)
    return Activation(kinds, "function") if kinds else None


def _configured(ctx: "FileContext", value: cst.BaseExpression, values: list[cst.BaseExpression]) -> Activation | None:
    """`config.act` beside `ACT2FN[config.act]` (`if isinstance(config.act, str)` picks one): the
    config holds a name of the table or the callable itself. Only as the other half of that table
    look-up with the same key; kind "configured" (a callable of the config, not known here)."""
    if not isinstance(value, cst.Attribute) or self_attribute(value) is not None:
        return None
    key = ctx.code(value)
    for other in values:
        if isinstance(other, cst.Subscript) and len(other.slice) == 1 \
                and isinstance(other.slice[0].slice, cst.Index) and ctx.code(other.slice[0].slice.value) == key:
            table = _table(ctx, other)
            if table is not None and table.construct == "table (key not known)":
                return Activation(frozenset({"configured"}), "table (key not known)")
    return None


def _union(found: list[Activation | None], construct: str | None) -> Activation | None:
    if not found or not all(found):
        return None
    kinds = frozenset().union(*(f.kinds for f in found))
    parameter = next((f.parameter for f in found if f.parameter), None)
    return Activation(kinds, construct or found[0].construct, parameter=parameter)


def _instance(ctx: "FileContext", cls, call: cst.Call, _depth: int) -> Activation | None:
    func = call.func
    function = is_parameter(ctx, func)
    if function is not None:  # `act_layer()` with `act_layer=nn.GELU` as the default
        default = parameter_default(function, func.value)
        kinds = _symbols_kinds(ctx, symbols_of(ctx, default), instance=True) if default is not None else None
        return Activation(kinds, "parameter default", parameter=func.value) if kinds else None
    symbols = symbols_of(ctx, func)
    kinds = _symbols_kinds(ctx, symbols, instance=True, call=call)
    if kinds:
        return Activation(kinds, "module")
    if len(symbols) == 1 and symbols[0].kind == "function":  # get_activation("gelu")
        return _getter(ctx, call, symbols[0])
    return None


def _symbols_kinds(ctx: "FileContext", symbols: list[Symbol], instance: bool,
                   call: cst.Call | None = None) -> frozenset[str] | None:
    """The activation kinds a name stands for: a class (called to build a module, `instance`) or a
    function (applied directly)."""
    if not symbols:
        return None
    kinds = set()
    for symbol in symbols:
        kind = _symbol_kind(ctx, symbol, instance, call)
        if kind is None:
            return None
        kinds.add(kind)
    return frozenset(kinds)


def _symbol_kind(ctx: "FileContext", symbol: Symbol, instance: bool, call: cst.Call | None) -> str | None:
    project = ctx.project
    if symbol.kind == "external":
        if instance:
            kind = ACTIVATION_CLASSES.get(symbol.qualified)
            if kind == "gelu" and call is not None and _tanh_approximate(call):
                return "gelu_tanh"
            return kind
        return ACTIVATION_FUNCTIONS.get(symbol.qualified)
    if symbol.kind == "function" and not instance and isinstance(symbol.node, ast.FunctionDef):
        return elementwise_kind(project, symbol.path, symbol.node, skip_self=False)
    if symbol.kind == "class" and instance and project.is_nn_module(symbol):
        for ancestor in project.ancestors(symbol):
            if ancestor.kind == "external" and ancestor.qualified in ACTIVATION_CLASSES:
                overridden = project.method(symbol, "forward")
                if overridden is None:
                    return ACTIVATION_CLASSES[ancestor.qualified]
        found = project.method(symbol, "forward")
        if found is not None:
            return elementwise_kind(project, found[0].path, found[1], skip_self=True)
    return None


# Activation tables of libraries, by config string (Hugging Face's, as of transformers 4.x: the
# entries every version has; an unknown literal key is not resolved).
_LIBRARY_TABLES = {
    "transformers.activations.ACT2FN": {
        "relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "gelu_sigmoid", "silu": "silu", "swish": "silu",
        "tanh": "tanh", "sigmoid": "sigmoid", "mish": "mish", "relu6": "relu6", "linear": "identity",
        "leaky_relu": "leaky_relu",
    },
}


def _table(ctx: "FileContext", node: cst.Subscript) -> Activation | None:
    """`ACT2FN[key]`: a module-level dict of activations (functions or classes)."""
    symbols = symbols_of(ctx, node.value)
    if len(symbols) == 1 and symbols[0].kind == "external" and symbols[0].qualified in _LIBRARY_TABLES \
            and len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Index):
        key = node.slice[0].slice.value
        table = _LIBRARY_TABLES[symbols[0].qualified]
        if isinstance(key, cst.SimpleString):
            kind = table.get(key.evaluated_value)
            return Activation(frozenset({kind}), "table") if kind else None
        return Activation(frozenset(table.values()), "table (key not known)")
    if len(symbols) != 1 or symbols[0].kind != "assign" or len(node.slice) != 1:
        return None
    table = getattr(symbols[0].node, "value", None)
    if not isinstance(table, ast.Dict) or not table.keys:
        return None
    key = node.slice[0].slice.value if isinstance(node.slice[0].slice, cst.Index) else None
    wanted = key.evaluated_value if isinstance(key, cst.SimpleString) else None
    kinds = set()
    for entry, value in zip(table.keys, table.values):
        if not isinstance(entry, ast.Constant) or (wanted is not None and entry.value != wanted):
            continue
        kind = _table_value(ctx, symbols[0].path, value)
        if kind is None:
            return None
        kinds.add(kind)
    return Activation(frozenset(kinds), "table" if wanted else "table (key not known)") if kinds else None


def _table_value(ctx: "FileContext", path: str, value: ast.expr) -> str | None:
    """A table entry: a function (`gelu`, `F.relu`), a class (`nn.GELU`), or a built module (`nn.GELU()`)."""
    from tf_migrate.analysis.project.index import dotted_text

    instance = isinstance(value, ast.Call) and not value.args and not value.keywords
    text = dotted_text(value.func if instance else value)
    if text is None:
        return None
    symbols = ctx.project.resolve_dotted(path, text)
    kinds = {_symbol_kind(ctx, s, instance, None) for s in symbols}
    if not instance and not kinds - {None} and symbols:  # a class stored as a value, built on lookup
        kinds = {_symbol_kind(ctx, s, True, None) for s in symbols}
    return kinds.pop() if len(kinds) == 1 and None not in kinds else None


def _getter(ctx: "FileContext", call: cst.Call, symbol: Symbol) -> Activation | None:
    """`get_activation(name)` whose body returns `TABLE[name]` (or `TABLE[name]()`)."""
    function = symbol.node
    if not isinstance(function, ast.FunctionDef) or not function.args.args:
        return None
    returns = [n for n in ast.walk(function) if isinstance(n, ast.Return) and n.value is not None]
    if len(returns) > 1 or (returns and not isinstance(returns[0].value, ast.Subscript)
                            and not _returned_subscript_call(returns[0].value)):
        return _branch_getter(ctx, call, symbol)
    if len(returns) != 1:
        return None
    value = returns[0].value
    built = isinstance(value, ast.Call) and not value.args
    lookup = value.func if built else value
    if not (isinstance(lookup, ast.Subscript) and isinstance(lookup.slice, ast.Name)
            and lookup.slice.id == function.args.args[0].arg):
        return None
    from tf_migrate.analysis.project.index import dotted_text

    text = dotted_text(lookup.value)
    tables = ctx.project.resolve_dotted(symbol.path, text) if text else []
    if len(tables) != 1 or not isinstance(getattr(tables[0].node, "value", None), ast.Dict):
        return None
    key = _getter_key(call, function)
    wanted = key.evaluated_value if isinstance(key, cst.SimpleString) else None
    kinds = set()
    for entry, entry_value in zip(tables[0].node.value.keys, tables[0].node.value.values):
        if isinstance(entry, ast.Constant) and (wanted is None or entry.value == wanted):
            kind = _table_value(ctx, tables[0].path, entry_value)
            if kind is None:
                return None
            kinds.add(kind)
    return Activation(frozenset(kinds), "getter" if wanted else "getter (name not known)") if kinds else None


def _returned_subscript_call(value: ast.expr) -> bool:
    return isinstance(value, ast.Call) and not value.args and isinstance(value.func, ast.Subscript)


def _getter_key(call: cst.Call, function: ast.FunctionDef) -> cst.BaseExpression | None:
    """What the call passes for the getter's first parameter (by position or keyword)."""
    name = function.args.args[0].arg
    for position, arg in enumerate(call.args):
        if arg.star:
            return None
        if (arg.keyword is None and position == 0) or (arg.keyword is not None and arg.keyword.value == name):
            return arg.value
    return None


def _branch_getter(ctx: "FileContext", call: cst.Call, symbol: Symbol) -> Activation | None:
    """`get_activation_fn(name)` written as `if name == "relu": return F.relu` / `elif ...` /
    `else: raise`: the branch the call's literal selects, or every branch (a choice)."""
    function = symbol.node
    name = function.args.args[0].arg
    branches: list[tuple[object, ast.expr]] = []
    if not _collect_branches(function.body, name, None, branches) or not branches:
        return None
    key = _getter_key(call, function)
    wanted = key.evaluated_value if isinstance(key, cst.SimpleString) else None
    chosen = [value for literal, value in branches if wanted is None or literal == wanted]
    if not chosen:
        return None
    kinds = set()
    for value in chosen:
        kind = "identity" if _identity_lambda(value) else _table_value(ctx, symbol.path, value)
        if kind is None:
            return None
        kinds.add(kind)
    return Activation(frozenset(kinds), "getter" if wanted is not None else "getter (name not known)")


def _collect_branches(body: list[ast.stmt], name: str, literal, found: list) -> bool:
    """Returns of an if/elif chain on `name == "..."`; False for any other statement that may
    return or bind (a docstring, a warning call and `raise` are fine)."""
    for statement in body:
        if isinstance(statement, ast.Return):
            if statement.value is None:
                return False
            found.append((literal, statement.value))
            return True  # later statements of this body never run
        if isinstance(statement, ast.If):
            test = statement.test
            case = None
            if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq) \
                    and isinstance(test.left, ast.Name) and test.left.id == name \
                    and isinstance(test.comparators[0], ast.Constant):
                case = test.comparators[0].value
            if not _collect_branches(statement.body, name, case if case is not None else literal, found):
                return False
            if not _collect_branches(statement.orelse, name, literal, found):
                return False
        elif isinstance(statement, ast.Raise) or (isinstance(statement, ast.Expr) and isinstance(
                statement.value, (ast.Constant, ast.Call))):
            continue
        else:
            return False
    return True


def _identity_lambda(value: ast.expr) -> bool:
    return isinstance(value, ast.Lambda) and len(value.args.args) == 1 and isinstance(value.body, ast.Name) \
        and value.body.id == value.args.args[0].arg
