"""The models a table feeds and the classes they are built from, across files (TFM401 across
files, across.py): the class that adds the table, or the classes that build it when the attention
lies further up (`_models`); every project module class a class's methods build (`closure`);
where a class is built (`instantiations`); and that the classes on the way to an attention are
built by no other model (`_not_shared`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import libcst as cst

from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nodes import find
from tf_migrate.rules.rope.places import Where, _context, _rel, _short, class_named

_MAX_UP = 3  # holders followed up from the class that adds the table to the model with attention
_BUILTIN_ATTENTION = (
    "torch.nn.MultiheadAttention", "torch.nn.Transformer", "torch.nn.TransformerEncoder",
    "torch.nn.TransformerDecoder", "torch.nn.TransformerEncoderLayer", "torch.nn.TransformerDecoderLayer",
)


def _models(project, where: Where, depth: int = 0) -> list[Where]:
    """The class that adds the table when its own parts hold attention, else every class that
    builds it in `__init__` (an embedding shared by an encoder and a decoder), followed up."""
    if any(_has_attention(project, m) for m in closure(project, where)):
        return [where]
    holders = instantiations(project, where)
    if depth >= _MAX_UP or not holders or any(h.owner is None or not h.in_init for h in holders):
        built = "nothing in the run builds it" if not holders else "it is built at " + ", ".join(
            f"{_rel(project, h.path)} line {h.line}" for h in holders) + ", not only in models' `__init__`"
        raise Refused(0, f"`{where.qualname}` adds the positions but runs no attention, and {built}: "
                      "tf-migrate cannot tell which attention consumes its positions", "")
    found: list[Where] = []
    for holder in holders:
        for model in _models(project, Where(holder.path, holder.owner), depth + 1):
            if model not in found:
                found.append(model)
    return found


def _has_attention(project, where: Where) -> bool:
    fctx = _context(project, where.path)
    cls = class_named(fctx, where.qualname)
    code = fctx.code(cls.node)
    if "scaled_dot_product_attention" in code:  # TFM101 may have rewritten it first (an all-rules run)
        return True
    return ("softmax" in code or "Softmax" in code) and ("@" in code or "matmul" in code or "bmm" in code
                                                         or "einsum" in code or "scaled_dot_product" in code)


def closure(project, where: Where) -> list[Where]:
    """`where` and every project module class its methods build, across files; refuses built-in
    attention, modules of other libraries and modules passed in through the constructor."""
    return project.memo(("rope.closure", where), lambda: _closure(project, where))


def _closure(project, root: Where) -> list[Where]:
    found: list[Where] = []
    pending = [root]
    while pending:
        where = pending.pop(0)
        if where in found:
            continue
        found.append(where)
        fctx = _context(project, where.path)
        cls = class_named(fctx, where.qualname)
        init = cls.methods.get("__init__")
        params = {p.name.value for p in init.params.params} - {"self"} if init is not None else set()
        for call in find(cls.node, lambda n: isinstance(n, cst.Call)):
            callee = fctx.names.callee(call) or ""
            if callee in _BUILTIN_ATTENTION:
                raise Refused(fctx.line(call), f"`{where.qualname}` ({_rel(project, where.path)}) uses built-in "
                              f"`{callee}`: rotary embeddings cannot be inserted into built-in attention",
                              "write the attention by hand, then migrate")
            built = callee_class(fctx, call.func)
            if built is not None:
                pending.append(built)
            elif callee and not callee.startswith("torch.") and callee.rsplit(".", 1)[-1][:1].isupper() \
                    and _stored(fctx, call):
                raise Refused(fctx.line(call), f"`{where.qualname}` builds `{callee}` from another library: "
                              "tf-migrate cannot see whether it holds attention", "")
        for sub in (init.body.body if init is not None and isinstance(init.body, cst.IndentedBlock) else []):
            for assign in find(sub, lambda n: isinstance(n, cst.Assign)):
                target = assign.targets[0].target if len(assign.targets) == 1 else None
                if target is not None and self_attribute(target) and _passes_parameter(assign.value, params):
                    kept = f"`{where.qualname}` keeps a module passed to its constructor (`{fctx.code(assign)}`)"
                    pending += _injected(project, where, init, _passed(assign.value, params), kept)
    return found


def _passed(value, params: set[str]) -> list[str]:
    """The constructor parameters `_passes_parameter` found kept in `value`."""
    if isinstance(value, cst.IfExp):
        return [name for side in (value.body, value.orelse) if _passes_parameter(side, params)
                for name in _passed(side, params)]
    if isinstance(value, cst.Name):
        return [value.value]
    head = value.func.value if isinstance(value.func, cst.Name) else value.func.attr.value
    return [a.value.value for a in value.args if isinstance(a.value, cst.Name) and a.value.value in params
            and (head in ("ModuleList", "Sequential", "ModuleDict") or _modulish(a.value.value))]


def _injected(project, where: Where, init, names: list[str], kept: str) -> list[Where]:
    """The project classes every construction site of `where` builds in its arguments `names`
    (dependency injection: `Encoder([Layer(d) for _ in range(n)])` in a model's `__init__`); refuses
    unless every site is visible, in a class's `__init__`, and builds only classes it can read."""
    from tf_migrate.rules.rope.one_stream import _argument  # one_stream follows callers with this module

    built = instantiations(project, where)
    if not built:
        raise Refused(0, f"{kept}, and nothing in the run builds it: tf-migrate cannot see its attention", "")
    order = [p.name.value for p in init.params.params][1:]
    defaults = {p.name.value: p.default for p in init.params.params}
    found: list[Where] = []
    for b in built:
        bctx = _context(project, b.path)
        calls = [c for c in find(bctx.module, lambda n: isinstance(n, cst.Call))
                 if bctx.line(c) == b.line and callee_class(bctx, c.func) == where]
        if b.owner is None or not b.in_init or len(calls) != 1 or any(a.star for a in calls[0].args):
            raise Refused(b.line, f"{kept}, and it is built at {_rel(project, b.path)} line {b.line} other than "
                          "with plain arguments in a model's `__init__`: tf-migrate cannot see its attention", "")
        for name in names:
            given = _argument(calls[0], order, name)
            if given is None and isinstance(defaults.get(name), cst.Name) and defaults[name].value == "None":
                continue
            what = _built_in(bctx, given) if given is not None else None
            if what is None:
                raise Refused(b.line, f"{kept}, and `{_short(bctx, calls[0])}` ({_rel(project, b.path)} line "
                              f"{b.line}) passes `{name}` as something other than modules it builds there: "
                              "tf-migrate cannot see its attention", "")
            found += [w for w in what if w not in found]
    return found


def _built_in(fctx, expr) -> list[Where] | None:
    """The project module classes `expr` builds (`Layer(...)`, a list or comprehension of them), or
    None when it is anything else (a name, a factory, a class of another library) or builds none."""
    if isinstance(expr, (cst.List, cst.Tuple)):
        parts = [_built_in(fctx, e.value) for e in expr.elements]
        return None if not parts or None in parts else [w for part in parts for w in part]
    if isinstance(expr, (cst.ListComp, cst.GeneratorExp)):
        return _built_in(fctx, expr.elt)
    if not isinstance(expr, cst.Call) or callee_class(fctx, expr.func) is None:
        return None
    found = []
    for call in find(expr, lambda n: isinstance(n, cst.Call)):
        callee = fctx.names.callee(call) or ""
        built = callee_class(fctx, call.func)
        if built is not None:
            found.append(built)
        elif callee in _BUILTIN_ATTENTION or not (callee.startswith("torch.") or callee in ("range", "len", "int")):
            return None
    return found


def _passes_parameter(value, params: set[str]) -> bool:
    """`self.x = layer`, `self.x = clones(layer, n)`: a constructor argument named like a module
    (also one side of `... if layers is not None else None`)."""
    if isinstance(value, cst.IfExp):
        return _passes_parameter(value.body, params) or _passes_parameter(value.orelse, params)
    if isinstance(value, cst.Name):
        return value.value in params and _modulish(value.value)
    if isinstance(value, cst.Call) and isinstance(value.func, (cst.Name, cst.Attribute)):
        head = value.func.value if isinstance(value.func, cst.Name) else value.func.attr.value
        if head in ("ModuleList", "Sequential", "ModuleDict"):  # `nn.ModuleList(layers)`: modules from outside
            return any(isinstance(a.value, cst.Name) and a.value.value in params for a in value.args)
        if head[:1].isupper():
            return False
        return any(isinstance(a.value, cst.Name) and a.value.value in params and _modulish(a.value.value)
                   for a in value.args)
    return False


def _modulish(name: str) -> bool:
    """`layer`, `encoder_layer`, `self_attn`: not `n_layers`, `attn_heads`, `d_model` (sizes)."""
    words = name.lower().split("_")
    return words[0] not in ("n", "num", "number", "d", "dim", "max") and words[-1] in _MODULE_WORDS


_MODULE_WORDS = ("layer", "layers", "block", "blocks", "module", "modules", "attn", "attention",
                 "encoder", "decoder", "net", "stack", "sublayer")


def _stored(fctx, call: cst.Call) -> bool:
    """`self.x = Cls(...)` or `Cls(...)` inside an nn container."""
    current = fctx.parents.get(call)
    while current is not None and not isinstance(current, cst.SimpleStatementLine):
        if isinstance(current, cst.Call) and (fctx.names.callee(current) or "").startswith("torch.nn."):
            return True
        if isinstance(current, cst.Assign):
            return any(self_attribute(t.target) for t in current.targets)
        current = fctx.parents.get(current)
    return False


def callee_class(fctx, func) -> Where | None:
    """The project module class a call's function names (this file's, or imported)."""
    from tf_migrate.analysis.symbols import dotted as dotted_text

    name = dotted_text(func) if isinstance(func, (cst.Name, cst.Attribute)) else None
    if not name or name.startswith("self."):
        return None
    if "." not in name:
        for cls in fctx.module_classes:
            if cls.qualname == name:
                return Where(fctx.project_key, name)
    for symbol in fctx.project.resolve_dotted(fctx.project_key, name):
        if symbol.kind == "class" and symbol.path is not None and symbol.path != fctx.project_key:
            other = _context(fctx.project, symbol.path)
            if other is not None and any(c.qualname == symbol.qualname for c in other.module_classes):
                return Where(symbol.path, symbol.qualname)
    return None


@dataclass(frozen=True)
class Built:
    """Where a class is instantiated: the file, line, enclosing class and method, `self.<attr>`."""

    path: str
    line: int
    owner: str | None
    method: str | None
    attr: str | None  # `self.<attr> = Cls(...)` directly; None inside a container or elsewhere

    @property
    def in_init(self) -> bool:
        return self.method == "__init__"


def instantiations(project, where: Where) -> list[Built]:
    return project.memo(("rope.built", where), lambda: list(_instantiations(project, where)))


def _instantiations(project, where: Where) -> Iterator[Built]:
    short = where.qualname.rsplit(".", 1)[-1]
    word = re.compile(rf"\b{re.escape(short)}\b")
    for path in sorted(project.files):
        text = project.text(path)
        if text is None or not word.search(text):
            continue
        fctx = _context(project, path)
        if fctx is None:
            continue
        for call in find(fctx.module, lambda n: isinstance(n, cst.Call)):
            if callee_class(fctx, call.func) != where:
                continue
            owner = method = attr = None
            function = fctx.index.enclosing(call, cst.FunctionDef)
            klass = fctx.index.enclosing(call, cst.ClassDef)
            if klass is not None and function is not None:
                cls = next((c for c in fctx.module_classes if c.node is klass), None)
                owner = cls.qualname if cls is not None else None
                method = function.name.value
                parent = fctx.parents.get(call)
                if isinstance(parent, cst.Assign) and parent.value is call and len(parent.targets) == 1:
                    attr = self_attribute(parent.targets[0].target)
            yield Built(path, fctx.line(call), owner, method, attr)


def _not_shared(project, inside: list[Where], models: list[Where], attention: list[Where]) -> None:
    """Every class on the way to an attention is built only inside the component's models: another
    model running the same attention keeps its own positions."""
    carriers = [w for w in inside if w not in models and any(a in closure(project, w) for a in attention)]
    names = set(inside)
    for where in carriers:
        for b in instantiations(project, where):
            if b.owner is None or Where(b.path, b.owner) not in names:
                user = f"`{b.owner}`" if b.owner else "code outside any class"
                raise Refused(b.line, f"`{where.qualname}` ({_rel(project, where.path)}), which runs attention "
                              f"rotated here, is also built by {user} ({_rel(project, b.path)} line {b.line}), "
                              "whose positions stay as they are", "give the two models separate attention classes")
