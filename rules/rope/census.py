"""TFM401's census: a table of sin/cos of positions times frequencies that reaches the tokens.

Any spelling, any file: the table may be a buffer, a parameter, a plain attribute, computed per
call, built by a helper (numpy included) or copied into an `nn.Embedding`. Positions are `arange`
or `range` values (through helpers of the same file), or a `meshgrid` of them (a 2-D image table);
frequencies come from `exp`, `pow` or `**`. The table must reach an addition (`a + t` or `a += t`)
of the token stream, in this file or, through a function or module another file imports (see
`tree.py`), in that file. Not components: timestep embeddings (the positions are an input passed
in from outside), relative-distance tables (a difference of two position ranges, or a table handed
to a projection inside attention), index arithmetic on the table's size, and tables that never
meet an addition.

Each component is one addition: a table added in two places (an encoder and a decoder) is two
components. A component lies at the table when the addition is in the table's own class or
function, else at the addition; a table another file adds is also a component of its own file.
`sites` gives each component the refusal TFM401 answers when its matcher cannot rewrite it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Iterator

from tf_migrate.analysis.census import Function, last_name, literal_string, self_attribute, walker
from tf_migrate.engine.rule import Component

_TRIG = ("sin", "cos", "sin_", "cos_")
_RANGES = ("arange", "range")
_POWERS = ("exp", "pow", "power", "float_power", "exp2", "logspace")


def may_hold_a_flat_table(text: str) -> bool:
    """Whether `tables` can find a table that is not 2-D in a file with this text: its sin/cos reads
    positions from an `arange`/`range` call and frequencies from a power (`_POWERS` or `**`) of the
    same file (`_positions_times_frequencies` walks back inside the file only)."""
    return any(t in text for t in ("sin(", "sin_(")) and any(r in text for r in _RANGES) and (
        "**" in text or any(p in text for p in _POWERS))


_KIND = "sinusoidal-positions"
# the helper TFM401 inserts (rotary_code.py): rotary already, its cos/sin are no absolute table
_ROTARY_HELPERS = ("_rotary_cos_sin", "apply_rotary")


@dataclass
class Site:
    """A component, and what TFM401 says about it when its matcher leaves it: the line and reason."""

    component: Component
    line: int
    reason: str
    hint: str = ""


def components(ctx, code: str) -> Iterator[Component]:
    for site in sites(ctx, code):
        yield site.component


def sites(ctx, code: str) -> list[Site]:
    return ctx.memo(("rope.sites", code), lambda: list(_sites(ctx, code)))


def _sites(ctx, code: str) -> Iterator[Site]:
    from tf_migrate.rules.rope import tree

    walk = walker(ctx)
    index = walk.index
    seen: set[int] = set()
    for table in tables(walk) if any(t in ctx.text for t in ("sin(", "sin_(")) else ():
        for addition in table.additions:
            if id(addition) in seen:
                continue
            seen.add(id(addition))
            if not _never_called(ctx, walk, index.function_of(addition)):
                yield _local_site(walk, code, table, addition)
        if not table.additions and table.exports:
            user = tree.first_user(ctx, table)
            if user is not None:
                yield _exported_site(walk, code, table, user)
    yield from _attention_sites(ctx, code)
    for use in [*tree.imported_additions(ctx), *tree.argument_additions(ctx)]:
        if id(use.addition) in seen:
            continue
        seen.add(id(use.addition))
        statement = index.statement_of(use.addition)
        function = index.function_of(use.addition)
        owner = function.cls.qualname if function.cls else function.qualname
        start, end = statement.lineno, statement.end_lineno or statement.lineno
        scopes = (function.lines,) + ((function.cls.node.lineno, function.cls.node.end_lineno),) \
            if function.cls else (function.lines,)
        what = (f"sin/cos table of positions x frequencies built by `{use.source.name}` "
                f"({use.source.relpath}, line {use.source.start}) added to the token stream (line {start})")
        yield Site(Component(code, _KIND, owner, start, end, what, (), scopes), start,
                   use.reason, use.hint)


def _never_called(ctx, walk, function: Function) -> bool:
    """A module-level helper that adds the table to its own argument, which no file of the run
    names besides its definition: nothing puts these positions on any model's tokens."""
    import re

    node = function.node
    if function.cls is not None or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
            or walk.index.owner.get(node) is not walk.index.functions[0]:
        return False
    word = re.compile(rf"\b{re.escape(node.name)}\b")
    if len(word.findall(ctx.text)) != 1:
        return False
    project = ctx.project
    for path in sorted(project.files):
        text = project.text(path) if path != ctx.project_key else None
        if text is not None and word.search(text):
            return False
    return True


def _attention_sites(ctx, code: str) -> Iterator[Site]:
    """The attention classes of this file that a whole-tree component rotates (across.py): part of
    that component, so their edit is accounted for here."""
    from tf_migrate.rules.rope.across import decisions_for
    from tf_migrate.rules.rope.places import _rel

    for decision in decisions_for(ctx):
        if decision.problem is not None:
            continue
        for where in [*decision.rotated_at_entry(), *(g.holder for g in decision.guards)]:
            cls = next((c for c in ctx.module_classes if c.qualname == where.qualname), None)
            if where.path != ctx.project_key or cls is None:
                continue
            lines = ctx.lines(cls.node)
            start, end = lines.start, lines.stop - 1
            tables = ", ".join(f"`{s.name}` ({_rel(ctx.project, s.path)})" for s in decision.sources)
            what = f"attention fed by the sinusoidal positions of {tables}, rotated with them"
            yield Site(Component(code, "rotary-attention", where.qualname, start, end, what, (), ((start, end),)),
                       start, f"the attention of the positions of {tables} could not be rotated here", "")


@dataclass
class Table:
    """The sin/cos calls of one table, the additions they reach in this file, and the functions
    (`forward` of a class, or a module-level function) that return them to callers elsewhere."""

    calls: list[ast.Call]
    additions: list[ast.AST]
    exports: list[Function]
    two_d: bool
    condition: int | None = None  # the `if` line under which the table is written into a module

    @property
    def start(self) -> int:
        return min(c.lineno for c in self.calls)

    @property
    def end(self) -> int:
        return max(c.end_lineno or c.lineno for c in self.calls)


def tables(walk) -> list[Table]:
    """The file's sinusoidal tables, one per set of sin/cos calls reaching the same places."""
    index = walk.index
    found: dict[tuple, Table] = {}
    for call in index.calls:
        if last_name(call.func) not in _TRIG:
            continue
        argument = call.args[0] if call.args else (
            call.func.value if isinstance(call.func, ast.Attribute) else None)
        if argument is None or index.function_of(call).qualname in _ROTARY_HELPERS:
            continue
        two_d = _grid(walk, argument)
        if not two_d and not _positions_times_frequencies(walk, argument):
            continue
        exports: list[Function] = []
        filled: list[ast.arg] = []

        def hit(node, function, exports=exports, filled=filled):
            if _is_addition(walk, node) or _learned_scale(node, function):
                return True
            parent = index.parents.get(node)
            if isinstance(parent, ast.Return) and _exported(walk, function) and function not in exports:
                exports.append(function)
            elif isinstance(parent, ast.Assign) and node is parent.value:
                filled.extend(_parameter_written(function, parent))
            return False

        def onward(start):
            return walk.forward_every(start, hit=hit, follow_call=following(walk),
                                      follow_returns=lambda f: _return_sites(walk, f))

        additions = list(onward(call))
        condition = None
        for parameter in filled:  # `fill(out=self.pos.weight)` writes the table into the caller's module
            for argument in walk.arguments_for(parameter):
                cls = index.function_of(argument).cls
                attribute = self_attribute(_self_root(argument))
                if cls is None or attribute is None:
                    continue
                condition = condition or _condition(walk, argument)
                for read in walk.attribute_reads(cls, attribute):
                    additions.extend(a for a in onward(read) if a not in additions)
        additions = [a for a in additions if _is_addition(walk, a) and not _not_tokens(walk, a)]
        key = (tuple(id(a) for a in additions), tuple(id(f) for f in exports))
        if not additions and not exports:
            continue
        if key in found:
            found[key].calls.append(call)
            found[key].two_d = found[key].two_d or two_d
        else:
            found[key] = Table([call], additions, exports, two_d, condition)
    return list(found.values())


def _learned_scale(node: ast.AST, function: Function) -> bool:
    """`self.alpha * table`: a table scaled by a learned weight is a learned scheme, not positions."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and function.cls is not None):
        return False
    return any(function.cls.constructor(a).rsplit(".", 1)[-1] == "Parameter" if a else False
               for a in (self_attribute(node.left), self_attribute(node.right)))


def _parameter_written(function: Function, assign: ast.Assign) -> list[ast.arg]:
    """`out[:, 0::2] = table` where `out` is a parameter of the function: the caller's tensor."""
    node = function.node
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return []
    params = {a.arg: a for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)}
    found = []
    for target in assign.targets:
        root = target
        while isinstance(root, (ast.Subscript, ast.Attribute)):
            root = root.value
        if target is not root and isinstance(root, ast.Name) and root.id in params and root.id != "self":
            found.append(params[root.id])
    return found


def _self_root(node: ast.AST) -> ast.AST:
    """`self.pos.weight.data` -> `self.pos`."""
    while isinstance(node, ast.Attribute) and self_attribute(node) is None:
        node = node.value
    return node


def _condition(walk, node: ast.AST) -> int | None:
    """The line of the innermost `if` the statement of `node` runs under, in its function."""
    current = walk.index.parents.get(node)
    while current is not None and not isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
        if isinstance(current, ast.If):
            return current.lineno
        current = walk.index.parents.get(current)
    return None


def _local_site(walk, code: str, table: Table, addition: ast.AST) -> Site:
    index = walk.index
    statement = index.statement_of(addition)
    line = statement.lineno
    table_function = index.function_of(table.calls[0])
    function = index.function_of(addition)
    together = function is table_function or (
        function.cls is not None and function.cls is table_function.cls)
    functions = {table_function, function}
    classes = {f.cls for f in functions if f.cls is not None}
    scopes = tuple(sorted(f.lines for f in functions)) + tuple(
        sorted((c.node.lineno, c.node.end_lineno or c.node.lineno) for c in classes))
    owner = table_function.cls.qualname if table_function.cls else table_function.qualname
    what = (f"sin/cos table of positions x frequencies (line {table.start}) added to the token "
            f"stream (line {line})")
    if together:
        component = Component(code, _KIND, owner, table.start, table.end, what, (line,), scopes)
    else:
        adder = function.cls.qualname if function.cls else function.qualname
        component = Component(code, _KIND, adder, line, statement.end_lineno or line, what, (), scopes)
    if table.two_d:
        reason, hint = two_d_reason(table.start)
    elif table.condition is not None:
        reason = (f"the sinusoidal table (line {table.start}) is written into the position module only "
                  f"under the `if` at line {table.condition}; otherwise the same addition (line {line}) adds "
                  "a trainable table, whose trained values cannot become rotary")
        hint = ""
    elif together and getattr(table_function.node, "name", "") == "__init__":
        reason = (f"the table built in `{table_function.qualname}` (line {table.start}) is added at line {line} "
                  "without being a registered buffer read directly there: TFM401 removes a table only when it "
                  "is a buffer of the class that adds it, or computed in the method that adds it")
        hint = "register the table as a buffer and add `self.<buffer>[...]` in forward"
    elif together:
        reason = (f"the table is built by the helper `{_name(table_function)}` (line {table.start}) and "
                  f"added at line {line}: TFM401 removes a table only when it is built in `__init__` of "
                  "the class that adds it (a buffer) or in the method that adds it")
        hint = "build the table in `__init__` and register it as a buffer"
    else:
        built = (f"built by the function `{table_function.qualname}`" if table_function.cls is None
                 else f"built in `{table_function.cls.qualname}`")
        reason = (f"the table {built} (line {table.start}) is added at line {line}, in `{component.cls}`: "
                  "TFM401 rewrites only a table added inside the class that builds it (a position module "
                  "whose forward returns `x + table`)")
        hint = "add the table inside its own module, used as a submodule of the model"
    return Site(component, line, reason, hint)


def _exported_site(walk, code: str, table: Table, user) -> Site:
    function = walk.index.function_of(table.calls[0])
    owner = function.cls.qualname if function.cls else function.qualname
    scopes = (function.lines,) + ((function.cls.node.lineno, function.cls.node.end_lineno),) \
        if function.cls else (function.lines,)
    what = (f"sin/cos table of positions x frequencies (line {table.start}) returned by "
            f"`{user.source}` and added to the token stream in {user.relpath} (line {user.line})")
    if user.two_d or table.two_d:
        reason, hint = two_d_reason(table.start)
    elif user.factory:
        reason, hint = user.reason, user.hint
    else:
        reason = (f"the table is returned by `{user.source}` and added to the token stream in {user.relpath} "
                  f"(line {user.line}), outside a method of a model class: TFM401 cannot tell which attention "
                  "consumes it")
        hint = "add the table inside a model class's forward"
    return Site(Component(code, _KIND, owner, table.start, table.end, what, (), scopes),
                table.start, reason, hint)


def two_d_reason(line: int) -> tuple[str, str]:
    return (f"2-D image position table (line {line}: rows and columns of a `meshgrid` share the "
            "channels): there is no 2-D rotary target", "")


def _name(function: Function) -> str:
    if function.cls is not None and getattr(function.node, "name", "") == "forward":
        return function.cls.qualname
    return function.qualname


def _exported(walk, function: Function) -> bool:
    """A module-level function, or the `forward` of a class: what another file may call."""
    node = function.node
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    if function.cls is not None:
        return node.name == "forward"
    return walk.index.owner.get(node) is walk.index.functions[0]


def _grid(walk, argument: ast.AST) -> bool:
    """Positions from a `meshgrid` of ranges: a 2-D image table."""
    def hit(node, function):
        return isinstance(node, ast.Call) and last_name(node.func) == "meshgrid"

    return walk.back(argument, hit=hit, into_functions=True) is not None


def _positions_times_frequencies(walk, argument: ast.AST) -> bool:
    def hit(node, function):
        factors = _factors(node)
        return factors is not None and any(
            _positions(walk, a) and _frequencies(walk, b) for a, b in (factors, factors[::-1]))

    return walk.back(argument, hit=hit, into_functions=True) is not None


def _factors(node: ast.AST) -> tuple[ast.AST, ast.AST] | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div, ast.MatMult)):
        return node.left, node.right
    if isinstance(node, ast.Call) and last_name(node.func) in ("outer", "ger", "einsum", "matmul"):
        tensors = [a for a in node.args if literal_string(a) is None]
        if len(tensors) == 2:
            return tensors[0], tensors[1]
    return None


def _is_range(node: ast.AST, function: Function) -> bool:
    return isinstance(node, ast.Call) and last_name(node.func) in _RANGES


def _positions(walk, node: ast.AST) -> bool:
    """Computed from `arange`/`range`, not from an input of the model, not a difference of two."""
    if walk.back(node, hit=_is_range, stop=_is_range, into_functions=True) is None:
        return False

    def outside_input(n, function):
        return isinstance(n, ast.arg) and n.arg != "self" and not walk.arguments_for(n)

    def difference(n, function):
        return isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and all(
            walk.back(side, hit=_is_range, stop=_is_range, into_functions=True) is not None
            for side in (n.left, n.right))

    return walk.back(node, hit=outside_input, stop=_is_range, into_functions=True) is None \
        and walk.back(node, hit=difference, stop=_is_range, into_functions=True) is None


def _frequencies(walk, node: ast.AST) -> bool:
    def hit(n, function):
        return (isinstance(n, ast.Call) and last_name(n.func) in _POWERS) or (
            isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow))

    return walk.back(node, hit=hit, into_functions=True) is not None


def sides(walk, addition: ast.AST) -> tuple[ast.AST, ast.AST]:
    """The two operands of `a + b`, or of `a += b` (the target and the value)."""
    if isinstance(addition, ast.BinOp):
        return addition.left, addition.right
    parent = walk.index.parents[addition]
    return parent.target, parent.value


def _not_tokens(walk, addition: ast.AST) -> bool:
    """Both sides of the addition come from convolutions or the table: audio or image features,
    not tokens (an embedding lookup, or an input whose origin is unknown)."""
    def module_call(kind):
        def hit(n, function):
            attribute = self_attribute(n.func) if isinstance(n, ast.Call) else None
            built = function.cls.constructor(attribute).lower() if attribute and function.cls else ""
            return kind in built or (kind == "embed" and attribute is not None and "emb" in attribute.lower())
        return hit

    both = sides(walk, addition)
    convolved = any(walk.back(s, hit=module_call("conv"), into_functions=True) is not None for s in both)
    embedded = any(walk.back(s, hit=module_call("embed"), into_functions=True) is not None for s in both)
    return convolved and not embedded


def _is_addition(walk, node: ast.AST) -> bool:
    """`a + b`, or the value of `a += b`; not arithmetic inside an index (`pe[:, n // 2 - t + 1:]`
    computes where to slice, from the table's size)."""
    parent = walk.index.parents.get(node)
    if isinstance(parent, ast.AugAssign) and isinstance(parent.op, ast.Add) and node is parent.value:
        return True
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)):
        return False
    current = node
    while parent is not None and not isinstance(parent, ast.stmt):
        if isinstance(parent, ast.Subscript) and current is parent.slice:
            return False
        current, parent = parent, walk.index.parents.get(parent)
    return True


def is_addition(walk, node: ast.AST) -> bool:
    return _is_addition(walk, node)


_TABLE_CALLS = ("cat", "stack", "from_pretrained", "Parameter", "tensor", "from_numpy", "FloatTensor",
                "Tensor", "as_tensor", "array", "unsqueeze", "to", "register_buffer", "copy_",
                "dropout", "Dropout", "flatten", "view", "reshape", "expand", "repeat", "interleave",
                "concatenate", "hstack", "vstack", "expand_dims", "astype")


def following(walk):
    """The calls a table passes through, except a concatenation with an input of the model."""
    return lambda call, function: _carries_table(call, function) and not _features(walk, call)


_JOINS = ("cat", "concat", "concatenate", "hstack", "vstack", "column_stack")


def _features(walk, call: ast.Call) -> bool:
    """`torch.cat((data, table), dim=-1)` where `data` is an input of the model (a parameter no
    call in the file fills): the table becomes extra input features, not positions added to the
    token stream (Fourier features of coordinates)."""
    if last_name(call.func) not in _JOINS or not call.args or not isinstance(call.args[0], (ast.Tuple, ast.List)):
        return False

    def outside_input(n, function):
        return isinstance(n, ast.arg) and n.arg != "self" and not walk.arguments_for(n)

    def table_part(n, function):
        return isinstance(n, ast.Call) and last_name(n.func) in (*_TRIG, *_RANGES)

    return any(walk.back(element, hit=table_part, into_functions=True) is None
               and walk.back(element, hit=outside_input, into_functions=True) is not None
               for element in call.args[0].elts)


def _carries_table(call: ast.Call, function: Function) -> bool:
    name = last_name(call.func)
    attribute = self_attribute(call.func)
    if attribute is not None:
        built = function.cls.constructor(attribute).lower() if function.cls else ""
        return "dropout" in built or "drop" == attribute
    return name in _TABLE_CALLS or name.startswith(("stack", "cat"))


def return_sites(walk, function: Function) -> Iterator[ast.AST]:
    return _return_sites(walk, function)


def _return_sites(walk, function: Function) -> Iterator[ast.AST]:
    if not hasattr(function.node, "name"):
        return
    yield from walk._callers(function)
    if function.cls is not None and function.cls.methods.get(function.node.name) is function.node:
        for call in walk.index.calls:  # `Table.build(...)`: a static or class method called by its class
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == function.node.name \
                    and isinstance(func.value, ast.Name) and func.value.id == function.cls.node.name:
                yield call
