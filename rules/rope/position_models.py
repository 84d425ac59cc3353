"""Which model a sinusoidal addition belongs to: the class that puts it on token embeddings.

Either the addition itself reads an `nn.Embedding` output (inline in the model's forward), or it
sits in a PositionalEncoding-like module whose only instance is a submodule of one model class
that feeds it embeddings. Anything else is refused: guessing the model would rewrite the wrong
attention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.dataflow import Binding, FunctionFlow
from tf_migrate.analysis.nodes import find, walk

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass
    from tf_migrate.rules.rope.positions import Addition


def model_of(ctx: "FileContext", addition: "Addition") -> "ModuleClass":
    """The class whose forward puts these positions on token embeddings; raises Refused."""
    flow = FunctionFlow(ctx, addition.method)
    if from_embedding(addition.cls, flow, addition.other, addition.statement):
        return addition.cls
    params = [p.name.value for p in addition.method.params.params]
    if addition.method.name.value != "forward" or len(params) < 2 or \
            not (isinstance(addition.other, cst.Name) and addition.other.value == params[1]):
        raise Refused(ctx.line(addition.statement), "sinusoidal positions are added to "
                      f"`{ctx.code(addition.other)}`, which tf-migrate cannot trace to token embeddings", "")
    return _user(ctx, addition.cls)


def from_embedding(cls: "ModuleClass", flow: FunctionFlow, expr, at, depth: int = 0) -> bool:
    """Whether `expr` is computed from the output of one of `cls`'s `nn.Embedding`s."""
    for node in walk(expr, into_scopes=False):
        if isinstance(node, cst.Call) and cls.submodule_of(node.func, "torch.nn.Embedding") is not None:
            return True
        if isinstance(node, cst.Name) and depth < 8 and flow.contains(at):
            definition = flow.definition(node.value, at)
            if isinstance(definition, Binding) and from_embedding(
                    cls, flow, definition.value, definition.statement, depth + 1):
                return True
    return False


def _instantiations(ctx: "FileContext", module: "ModuleClass") -> list[cst.Call]:
    name = module.node.name.value
    return ctx.index.calls_of(ctx.module, name)


def _user(ctx: "FileContext", module: "ModuleClass") -> "ModuleClass":
    """The one class that builds `module` as `self.x = Module(...)` and feeds it token embeddings."""
    every = _instantiations(ctx, module)
    owners = [owner for call in every for owner in _submodule_owners(ctx).get(id(call), ())]
    if len(owners) != 1 or len(every) != 1:
        where = ", ".join(str(ctx.line(c)) for c in every) or "nowhere in this file"
        raise Refused(ctx.line(module.node), f"`{module.qualname}` is instantiated at line(s) {where}, not "
                      "as one submodule of a model class in this file: tf-migrate cannot tell which "
                      "attention consumes its positions", "migrate a file where the model class builds it")
    cls, sub = owners[0]
    for method in cls.methods.values():
        flow = FunctionFlow(ctx, method)
        for call in find(method, lambda n: isinstance(n, cst.Call) and cls.submodule_of(n.func) is sub):
            statement = flow.statement_of(call)
            if not call.args or not from_embedding(cls, flow, call.args[0].value, statement):
                raise Refused(ctx.line(call), f"`{ctx.code(call)}` does not apply the positions to token "
                              "embeddings tf-migrate can trace", "")
    return cls


def _submodule_owners(ctx: "FileContext") -> dict[int, list[tuple["ModuleClass", object]]]:
    """id of a constructor call -> the (class, submodule) pairs it builds, once per file version
    (each addition's model asked every class of the file)."""
    def compute():
        table: dict[int, list] = {}
        for cls in ctx.module_classes:
            for sub in cls.submodules.values():
                if sub.call is not None:
                    table.setdefault(id(sub.call), []).append((cls, sub))
        return table

    return ctx.memo("rope.submodule_owners", compute)
