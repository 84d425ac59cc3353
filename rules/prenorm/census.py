"""TFM201's census: a residual add that flows into a layer/RMS norm before the next sublayer.

In any function of a class (a block's forward, or a model's layer loop), in one expression or
over statements: `norm(x + f(x))`, `y = x + drop(f(x)); x = norm(y)`, fairseq's
`residual = x; ...; x = residual + x; x = norm(x)`, BERT's `norm(dense(h) + input_tensor)`.
An add is a residual when one side is computed by a sublayer (a submodule or layer call) and the
other side is the stream that sublayer read (or an input passed in from outside). Sums of
embeddings are not residuals. Built-in `nn.Transformer*` layers are components too.
"""

from __future__ import annotations

import ast
import weakref
from typing import Iterator

from tf_migrate.analysis.census import (
    Function, builtin_layers, is_activation, is_dropout, is_norm, line_span,
    product_operands, self_attribute, walker,
)
from tf_migrate.analysis.nn_bases import dotted_text
from tf_migrate.analysis.walked import walked
from tf_migrate.rules.prenorm.add_modules import is_add_class, is_norm_subclass
from tf_migrate.engine.rule import Component


def components(ctx, code: str) -> Iterator[Component]:
    """One component per function holding post-norm residuals (the rule answers per block)."""
    index = walker(ctx).index
    found = _post_norm_sites(ctx)
    for function, sites in found.items():
        cls = function.cls
        start, end = line_span(*(node for site in sites for node in site))
        described = "; ".join(f"residual add (line {add.lineno}) of a sublayer (line {sub.lineno}) "
                              f"into a norm (line {norm.lineno})" for norm, add, sub in sites)
        yield Component(code, "post-norm", cls.qualname, start, end,
                        f"{len(sites)} post-norm sublayer(s): {described}",
                        _stack_lines(index, cls) + _after_layer_loop(index, function, sites),
                        scopes=(function.lines, (cls.node.lineno, cls.node.end_lineno or cls.node.lineno)),
                        step="" if function.node.name == "forward" else
                        f"it is in `{function.qualname}`; the matcher reads `forward` only")
    yield from _stacks_of_other_files(ctx, code)
    yield from builtin_components(index, code, ctx)


def _post_norm_sites(ctx) -> dict[Function, list[tuple[ast.Call, ast.BinOp, ast.Call]]]:
    """Function -> its (norm, residual add, sublayer) sites; computed once per file, as the stacks
    of other files ask for it too."""
    return ctx.memo("prenorm.census.sites", lambda: _find_sites(walker(ctx), ctx))


def _post_norm_classes(ctx) -> set[int]:
    """The ids of the classes that hold a function with post-norm sites (the file's walker index
    keeps the classes alive as long as the memo)."""
    return ctx.memo("prenorm.census.site_classes", lambda: {id(function.cls) for function in _post_norm_sites(ctx)})


def _find_sites(walk, ctx=None) -> dict[Function, list[tuple[ast.Call, ast.BinOp, ast.Call]]]:
    index = walk.index
    seen: set[int] = set()
    found: dict[Function, list[tuple[ast.Call, ast.BinOp, ast.Call]]] = {}
    for call in index.calls:
        function = index.function_of(call)
        if function.cls is None or not call.args or not (
                _is_norm(call, function) or ctx is not None and _norm_subclass(ctx, call, function)):
            continue
        added = _add_module_site(walk, ctx, call, function) if ctx is not None else None
        if added is not None:
            found.setdefault(function, []).append(added)
            continue
        add = walk.back(call.args[0], hit=lambda n, f: isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add),
                        stop=lambda n, f: _ends_branch(n, f))
        if add is None or id(add) in seen:
            continue
        residual = _residual(walk, add, function)
        if residual is None or not _becomes_stream(index, call, add, residual[1], function):
            continue
        sublayer = residual[0]
        seen.add(id(add))
        found.setdefault(function, []).append((call, add, sublayer))
    return found


def _after_layer_loop(index, function: Function, sites) -> tuple[int, ...]:
    """A model that is its own stack (norms `self.norms[i]` in `for i in range(...)`): the rule
    applies the final norm at the statement right after that loop."""
    lines = []
    body = getattr(function.node, "body", [])
    for norm, _, _ in sites:
        if not isinstance(norm.func, ast.Subscript):
            continue
        current = index.parents.get(norm)
        while current is not None and current not in body:
            current = index.parents.get(current)
        if isinstance(current, ast.For) and body.index(current) + 1 < len(body):
            lines.append(body[body.index(current) + 1].lineno)
    return tuple(sorted(set(lines)))


def _is_norm(node: ast.AST, function: Function) -> bool:
    """A norm, or an item of a per-layer list of norms (`self.norms[i]`: an nn.ModuleList filled
    with layer/RMS norms by `.append(...)` or a list comprehension)."""
    if is_norm(node, function):
        return True
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript) and function.cls is not None):
        return False
    attribute = self_attribute(node.func.value)
    return attribute is not None and _listed_norms(function.cls, attribute)


def _listed_norms(cls, attribute: str) -> bool:
    items = []
    for node in walked(cls.node):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append" \
                and self_attribute(node.func.value) == attribute and len(node.args) == 1:
            items.append(node.args[0])
    built = cls.constructor_call(attribute)
    if built is not None and built.args and isinstance(built.args[0], ast.ListComp):
        items.append(built.args[0].elt)
    names = [item.func.attr if isinstance(item.func, ast.Attribute) else getattr(item.func, "id", "")
             for item in items if isinstance(item, ast.Call)]
    return bool(names) and len(names) == len(items) and all(
        "layernorm" in name.lower() or "rmsnorm" in name.lower() for name in names)


def _becomes_stream(index, norm: ast.Call, add: ast.BinOp, stream: ast.AST, function: Function) -> bool:
    """Post-norm: the normed sum replaces the stream (`x = norm(x + f(x))`, or returned). In a
    pre-norm block the previous residual also flows into a norm, but that norm feeds a sublayer."""
    current = index.parents.get(norm)
    while current is not None and not isinstance(current, ast.stmt):
        if isinstance(current, ast.Call) and _is_sublayer(current, function):
            return False
        current = index.parents.get(current)
    if isinstance(current, ast.Return):
        return True
    if not (isinstance(current, ast.Assign) and len(current.targets) == 1
            and isinstance(current.targets[0], ast.Name)):
        return False
    streams = {stream.id} if isinstance(stream, ast.Name) else set()
    holder = index.statement_of(add)
    if isinstance(holder, ast.Assign):
        streams |= {t.id for t in holder.targets if isinstance(t, ast.Name)}
    if isinstance(holder, ast.AugAssign) and isinstance(holder.target, ast.Name):
        streams.add(holder.target.id)  # `q += residual; q = norm(q)`: the walk reads it as `q + residual`
    return current.targets[0].id in streams or _returned_name(function, current.targets[0].id)


def _returned_name(function: Function, name: str) -> bool:
    """`output = norm(...)` then `return output`: the normed sum leaves as the result, nothing else
    in the function reads it."""
    reads = [n for n in walked(function.node) if isinstance(n, ast.Name) and n.id == name
             and isinstance(n.ctx, ast.Load)]
    returns = [r for r in walked(function.node) if isinstance(r, ast.Return)
               and isinstance(r.value, ast.Name) and r.value.id == name]
    return bool(returns) and len(reads) == len(returns)


def _stack_lines(index, block) -> tuple[int, ...]:
    """Where a model runs a stack of this block (`for layer in self.layers:`): the final norm
    the rule adds there belongs to the block's component."""
    built, builders = _stacks(index)
    holders = {block.node.name} | builders.get(block.node.name, set())
    lines = []
    for name in holders:
        for cls, attribute in built.get(name, ()):
            lines += _loops_over(cls, attribute)
    return tuple(sorted(set(lines)))


_STACKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _stacks(index) -> tuple[dict[str, list], dict[str, set[str]]]:
    """Class name -> the (class, attribute) pairs whose `_built_names` hold it, and -> the classes
    that `_builds` it: read once per file index, not once per block and class."""
    if index not in _STACKS:
        built: dict[str, list] = {}
        builders: dict[str, set[str]] = {}
        for cls in index.classes:
            for attribute in cls.attributes:
                for name in _built_names(index, cls, attribute):
                    built.setdefault(name, []).append((cls, attribute))
            for values in cls.attributes.values():
                for v in values:
                    for n in walked(v):
                        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                            builders.setdefault(n.func.id, set()).add(cls.node.name)
        _STACKS[index] = built, builders
    return _STACKS[index]


_FORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _loops_over(cls, attribute: str) -> list[int]:
    """The lines of the class's `for` loops whose iterable reads `self.<attribute>`."""
    return [line for line, attributes in _fors(cls) if attribute in attributes]


def _fors(cls) -> list[tuple[int, set[str]]]:
    """(line, the `self.<x>` its iterable reads) per `for` of the class, in walk order: one walk
    per class, not one per class and attribute."""
    if cls not in _FORS:
        _FORS[cls] = [(node.lineno, {self_attribute(n) for n in walked(node.iter)})
                      for node in walked(cls.node) if isinstance(node, ast.For)]
    return _FORS[cls]


def _built_names(index, cls, attribute: str) -> set[str]:
    """The classes called to build `self.X`: in its value, or, for an `__init__` parameter
    (`nn.ModuleList(layers)`), in what the file's calls of the class pass for it."""
    values = cls.attributes.get(attribute, ())
    names = {n.func.id for v in values for n in walked(v) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    init = cls.methods.get("__init__")
    if init is None:
        return names
    parameters = [a.arg for a in init.args.posonlyargs + init.args.args][1:]
    passed = {n.id for v in values for n in walked(v) if isinstance(n, ast.Name) and n.id in parameters}
    for call in index.calls_named(cls.node.name) if passed else ():
        given = [(parameters[i], a) for i, a in enumerate(call.args[:len(parameters)])
                 if not isinstance(a, ast.Starred)] + [(k.arg, k.value) for k in call.keywords]
        names |= {n.func.id for name, value in given if name in passed for n in walked(value)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return names


def _stacks_of_other_files(ctx, code: str) -> Iterator[Component]:
    """A stack here of blocks whose post-norm sublayers are in another file of the tree
    (`for layer in self.layer_stack:` over `EncoderLayer`s holding an imported attention class
    that norms its own output): the rule adds the final norm here, so the stack is a component."""
    index = walker(ctx).index
    for cls in index.classes:
        for attribute in cls.attributes:
            loops = _loops_over(cls, attribute)
            if not loops:
                continue
            blocks = sorted(name for name in _built_names(index, cls, attribute)
                            if _reaches_other_file(ctx, name, ctx.project_key, 0))
            if blocks:
                yield Component(code, "post-norm", cls.qualname, loops[0], loops[0],
                                f"a stack `self.{attribute}` of `{blocks[0]}`, whose post-norm sublayers "
                                "are defined in another file", tuple(loops),
                                scopes=((cls.node.lineno, cls.node.end_lineno or cls.node.lineno),),
                                step="the final norm of a stack whose post-norm sublayers are in another file")


def _reaches_other_file(fctx, name: str, home: str, depth: int) -> bool:
    """`name` in `fctx` is a class of another file than `home` with post-norm residuals, or holds
    one (three levels down). A post-norm class of `home` itself stops the search: its own
    component claims the stack."""
    resolved = _resolve(fctx, name) if depth <= 3 else None
    if resolved is None:
        return False
    octx, info = resolved
    if id(info) in _post_norm_classes(octx):
        return octx.project_key != home
    index = walker(octx).index
    return any(_reaches_other_file(octx, held, home, depth + 1)
               for attribute in info.attributes for held in _built_names(index, info, attribute)
               if held != info.node.name)


def _resolve(fctx, name: str):
    """(file context, class) that a bare name stands for in `fctx`: its own class or an imported one."""
    local = walker(fctx).index.class_by_name.get(name)
    if local is not None:
        return fctx, local
    for symbol in fctx.project.resolve_name(fctx.project_key, name):
        if symbol.kind != "class" or not symbol.path or symbol.path == fctx.project_key:
            continue
        other = fctx.project.context(symbol.path)
        info = next((c for c in walker(other).index.classes if c.qualname == symbol.qualname), None) \
            if other is not None else None
        if info is not None:
            return other, info
    return None


def _builds(cls, names: set[str]) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names
               for values in cls.attributes.values() for v in values for n in walked(v))


def builtin_components(index, code: str, ctx=None) -> Iterator[Component]:
    for call, cls, name in builtin_layers(index):
        if ctx is not None and _project_class(ctx, call.func):
            continue  # the project's own `TransformerEncoderLayer` (imported): its forward is read as any block's
        yield Component(code, "builtin-layer", cls, call.lineno, call.end_lineno or call.lineno,
                        f"built-in `nn.{name}`")


def _ends_branch(node: ast.AST, function: Function) -> bool:
    """Walking back from a norm's input, a call that is not dropout ends the search: the add must
    flow into the norm with no sublayer in between."""
    return (isinstance(node, ast.Call) and not is_dropout(node, function)
            and not (isinstance(node.func, ast.Attribute) and self_attribute(node.func) is None)) \
        or product_operands(node) is not None or isinstance(node, ast.arg)


def _is_sublayer(node: ast.AST, function: Function) -> bool:
    if _parameter_projection(node, function):
        return True
    if not isinstance(node, ast.Call) or is_dropout(node, function) or _is_norm(node, function) \
            or is_activation(node, function):
        return False
    if isinstance(node.func, ast.Subscript) and self_attribute(node.func.value) is not None:
        return True  # an item of a per-layer list of sublayers: `self.attns[i](x, x, mask)`
    attribute = self_attribute(node.func)
    if attribute is not None:
        built = function.cls.constructor(attribute).lower() if function.cls else ""
        return "embed" not in built and "embed" not in attribute.lower()
    if isinstance(node.func, ast.Name):
        return node.func.id in function.iterated or node.func.id in function.bindings
    return False


def _residual(walk, add: ast.BinOp, function: Function) -> tuple[ast.Call, ast.AST] | None:
    """(the sublayer call, the stream operand) of a residual add, or None when it is not one."""
    for branch, stream in ((add.right, add.left), (add.left, add.right)):
        sublayer = walk.back(branch, hit=_is_sublayer, stop=lambda n, f: isinstance(n, ast.arg))
        if sublayer is None or _embedding_sum(walk, stream):
            continue
        stream_leaves = walk.leaves(stream)
        read = set().union(*(walk.leaves(a) for a in [*sublayer.args, *(k.value for k in sublayer.keywords)])) \
            if sublayer.args or sublayer.keywords else set()
        parameters = {a.arg for a in walked(function.node.args) if isinstance(a, ast.arg)} - {"self"}
        if stream_leaves & read or (stream_leaves and stream_leaves <= parameters):
            return sublayer, stream
    return None


def _embedding_sum(walk, stream: ast.AST) -> bool:
    """The stream operand is an embedding lookup reached without passing a norm or a sublayer
    (`tok + pos`); a stream normalised or computed by a layer since the embeddings (a model's own
    layer loop, which starts from them) is a residual stream."""
    return walk.back(stream, hit=_embedding, stop=lambda n, f: _is_norm(n, f) or _is_sublayer(n, f)) is not None


def _embedding(node: ast.AST, function: Function) -> bool:
    if not isinstance(node, ast.Call):
        return False
    attribute = self_attribute(node.func)
    built = function.cls.constructor(attribute) if attribute and function.cls else ""
    return "embed" in built.lower() or "embedding" in (attribute or "").lower()


def _project_class(ctx, func: ast.AST) -> bool:
    """`func` names a class defined in a file of the project (imports followed)."""
    text = dotted_text(func)
    symbols = ctx.project.resolve_dotted(ctx.project_key, text) if text else []
    return bool(symbols) and all(symbol.kind == "class" for symbol in symbols)


def _add_module_site(walk, ctx, norm: ast.Call, function: Function):
    """`s = self.add([f(h), input_tensor]); h = norm(s)`: a residual sum made by an add module (a
    project class whose forward adds up its list argument), one item computed by a sublayer and
    the other the stream passed in. (norm, add call, sublayer) or None."""
    def adder(node, f):
        attribute = self_attribute(node.func) if isinstance(node, ast.Call) else None
        return attribute is not None and len(node.args) == 1 and isinstance(node.args[0], ast.List) \
            and bool(f.cls.constructor(attribute)) \
            and is_add_class(ctx.project, ctx.project_key, f.cls.constructor(attribute))

    add = walk.back(norm.args[0], hit=adder, stop=lambda n, f: _ends_branch(n, f))
    if add is None or len(add.args[0].elts) != 2:
        return None
    parameters = {a.arg for a in walked(function.node.args) if isinstance(a, ast.arg)} - {"self"}
    for branch, stream in (add.args[0].elts, reversed(add.args[0].elts)):
        sublayer = walk.back(branch, hit=_is_sublayer, stop=lambda n, f: isinstance(n, ast.arg))
        leaves = walk.leaves(stream)
        if sublayer is not None and not _embedding_sum(walk, stream) \
                and leaves and leaves <= parameters:
            return norm, add, sublayer
    return None


def _norm_subclass(ctx, call: ast.Call, function: Function) -> bool:
    """`self.norm(...)` built by a project class deriving from a torch norm (`class TracedNorm(nn.LayerNorm)`)."""
    attribute = self_attribute(call.func)
    built = function.cls.constructor(attribute) if attribute else ""
    return bool(built) and is_norm_subclass(ctx.project, ctx.project_key, built)


def _parameter_projection(node: ast.AST, function: Function) -> bool:
    """`torch.einsum('ibnd,hnd->ibh', v, self.o)`, `x @ self.w`: a projection by a raw weight
    (`self.o = nn.Parameter(...)`), a sublayer written without a Linear."""
    operands = product_operands(node)
    if operands is None or function.cls is None:
        return False
    return any(self_attribute(o) is not None and "Parameter" in function.cls.constructor(self_attribute(o))
               for o in operands)
