"""Recognition of hand-written softmax attention inside the methods of an nn.Module.

    probs = dropout(softmax(mask(scale(q @ k^T)), dim=-1));  out = probs @ v

The chain may be one expression or spread over statements (names are followed back through their
bindings, `if mask is not None:` guards included). The result says what q, k, v, scale, masks
and dropout are, which statements the chain consumed, and, if it cannot be rewritten, why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import libcst as cst

from tf_migrate.analysis import einsum
from tf_migrate.analysis.census import META_ARGUMENT_METHODS, META_FUNCTIONS
from tf_migrate.analysis.mask_helpers import UnknownHelper, in_place_triangle
from tf_migrate.analysis.dataflow import (
    Binding, Definition, FunctionFlow, GuardedBinding, OpaqueBinding, binds, read_names,
)
from tf_migrate.analysis.nodes import find, find_types
from tf_migrate.analysis.names import argument, int_value, method_call, number_value, self_attribute
from tf_migrate.analysis.shapes import Shapes

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

SDPA = "torch.nn.functional.scaled_dot_product_attention"
_SOFTMAX = ("torch.nn.functional.softmax", "torch.softmax")
_DROPOUT = ("torch.nn.functional.dropout", "torch.dropout")


class NotAttention(Exception):
    """The expression is not a softmax-attention chain at all: say nothing."""


class Refused(Exception):
    """An attention chain that cannot be rewritten safely; `line` is what blocked it."""

    def __init__(self, line: int, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.line, self.reason, self.hint = line, reason, hint


@dataclass
class Operand:
    expr: cst.BaseExpression
    at: cst.BaseStatement  # where the expression is evaluated in the original code
    suffix: str = ""  # `.transpose(1, 2)` etc. that SDPA's (batch..., seq, dim) layout needs


@dataclass
class Mask:
    kind: str  # "fill" (expr is True where hidden) or "add" (expr is added to the scores)
    expr: cst.BaseExpression
    at: cst.BaseStatement
    guard: cst.BaseExpression | None = None
    scaled_after: bool = False
    # `if test:` block (with other statements) in which the mask is applied: it stays, and the
    # mask is computed where it was (`at`) into a name the call reads
    block: cst.If | None = None
    # a project helper fills this triangle of the scores in place (`mask_(scores, ...)`, the call
    # is `expr`): aligned top-left whatever the lengths, like SDPA's is_causal
    helper_region: str | None = None


@dataclass
class BlockMask:
    """`if test: ...; scores = scores.masked_fill(m, v)` where the block does more than mask."""

    statement: cst.If
    binding: Binding


@dataclass
class Dropout:
    p: str  # code
    training: str | None  # code of the training flag; None when dropout always applies


@dataclass
class Attention:
    cls: "ModuleClass"
    function: cst.FunctionDef
    flow: FunctionFlow
    shapes: Shapes
    product: cst.BaseExpression
    statement: cst.BaseStatement
    query: Operand | None = None
    key: Operand | None = None
    value: Operand | None = None
    output_suffix: str = ""
    scale: list[tuple[str, cst.BaseExpression, cst.BaseStatement]] = field(default_factory=list)
    masks: list[Mask] = field(default_factory=list)
    dropout: Dropout | None = None
    rank: int | None = None
    consumed: list[Definition] = field(default_factory=list)
    followed: set[int] = field(default_factory=set)
    # `softmax(s.float()).type_as(t)`: the code of `t`, whose dtype the probabilities are cast back to
    softmax_cast_to: str | None = None
    block_bindings: list[Binding] = field(default_factory=list)  # masks set inside a kept `if` block
    softmax_line: int = 0  # bindings from here on hold the probabilities, before it the scores
    # statements the call replaces besides the consumed bindings: in-place mask helper calls, and
    # assertions that only check the scores' shape
    extra_removed: list[cst.BaseStatement] = field(default_factory=list)
    # `return <product>, probs`: (the element holding probs, its position, the tuple's length),
    # set only when the matcher was asked to leave that use to the caller (`allow_returned`)
    returned: tuple[cst.Element, int, int] | None = None
    notes: list[str] = field(default_factory=list)


_PRODUCT_NAMES = frozenset({"matmul", "bmm", "baddbmm", "einsum"})  # the last names `_product_operands` reads


def _product_operands(ctx: "FileContext", node: cst.CSTNode):
    """(kind, left, right, einsum spec) of `a @ b`, `matmul(a, b)`, `bmm(a, b)`, `a.matmul(b)`,
    `a.bmm(b)`, `einsum(s, a, b)`."""
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.MatrixMultiply):
        return "matmul", node.left, node.right, None
    if not isinstance(node, cst.Call) or any(a.star for a in node.args):
        return None
    if isinstance(node.func, cst.Attribute) and node.func.attr.value not in _PRODUCT_NAMES:
        return None  # `a.b.f(...)` resolves to a name ending in `f`, if to any: not a product's
    name = ctx.names.callee(node)
    values = [a.value for a in node.args if a.keyword is None]
    if name in ("torch.matmul", "torch.bmm") and len(values) == 2:
        return name.split(".")[-1], values[0], values[1], None
    if name == "torch.baddbmm" and len(values) == 3:
        return "baddbmm", values[1], values[2], None  # beta * input + alpha * (b1 @ b2): see _Chain._baddbmm
    receiver = method_call(node, "matmul", "bmm")
    if receiver is not None and name is None and len(node.args) == 1 and len(values) == 1:
        return node.func.attr.value, receiver, values[0], None  # `a.matmul(b)`, `a.bmm(b)`
    if name == "torch.einsum" and len(values) == 3 and isinstance(values[0], cst.SimpleString):
        spec = einsum.parse(values[0].evaluated_value)
        if spec is not None:
            return "einsum", values[1], values[2], spec
    return None


class AttentionMatcher:
    """Finds the attention chains of one method."""

    def __init__(self, ctx: "FileContext", cls: "ModuleClass", function: cst.FunctionDef) -> None:
        self.ctx = ctx
        self.cls = cls
        self.function = function
        self.flow = FunctionFlow(ctx, function)
        self.shapes = Shapes(ctx, cls, self.flow)
        # the probabilities returned beside the product (`return p @ v, p`) are recorded in
        # `Attention.returned` instead of refused: the caller decides who reads them
        self.allow_returned = False

    def candidates(self) -> Iterator[tuple[cst.BaseExpression, cst.BaseStatement]]:
        # only these two node types can be products (`_product_operands`): a look-up, not a walk
        for node in find_types(self.function.body, (cst.BinaryOperation, cst.Call), into_scopes=False):
            if _product_operands(self.ctx, node) is not None:
                statement = self.flow.statement_of(node)
                if statement is not None:
                    yield node, statement

    def product(self, node: cst.CSTNode):
        """(kind, left, right, einsum spec) when `node` is a matrix product, else None."""
        return _product_operands(self.ctx, node)

    def score_operands(self, product: cst.BaseExpression, statement: cst.BaseStatement) -> Attention | None:
        """q and k of a `q @ k^T`-style scores product (with k's transpose undone), else None.

        Only the product itself is read, so this works where the rest of the chain is too tangled
        for `match` (other rules that only need q and k use it).
        """
        found = Attention(self.cls, self.function, self.flow, self.shapes, product, statement)
        try:
            _Chain(self, found)._qk(product, statement, -1)
        except (NotAttention, Refused):
            return None
        return found

    def match(self, product: cst.BaseExpression, statement: cst.BaseStatement) -> Attention:
        """Raises NotAttention or Refused; returns the chain otherwise."""
        kind, probs, v, spec = _product_operands(self.ctx, product)
        if kind == "baddbmm":
            raise NotAttention  # a product with v never adds a bias to itself
        found = Attention(self.cls, self.function, self.flow, self.shapes, product, statement)
        self.last = found  # what was read before a refusal (the rule may name a better reason)
        chain = _Chain(self, found)
        probs, at = chain.follow(probs, statement)
        probs, at = chain.dropout(probs, at)
        scores, at, dim = chain.softmax(probs, at)
        chain.scores(scores, at, dim)
        chain.product(kind, v, spec, statement)
        chain.check_cast_back()
        chain.check_uses()
        chain.check_moves()
        return found


class _Chain:
    """Walks one chain from the product back to q and k, filling in an `Attention`."""

    def __init__(self, matcher: AttentionMatcher, found: Attention) -> None:
        self.m = matcher
        self.ctx = matcher.ctx
        self.found = found
        self.moves: list[tuple[cst.BaseExpression, cst.BaseStatement]] = []

    def line(self, node: cst.CSTNode, fallback: cst.CSTNode | None = None) -> int:
        return self.ctx.line(node) or self.ctx.line(fallback or self.found.statement)

    def follow(self, expr: cst.BaseExpression, at: cst.BaseStatement, strict: bool = False):
        """Step from a local name to the expression bound to it (recording the binding).

        `strict`: past the softmax, a binding that cannot be followed is a refusal, not silence.
        """
        while isinstance(expr, cst.Name):
            definition = self.m.flow.definition(expr.value, at)
            if strict and isinstance(definition, Binding):
                self._helper_masks(expr.value, definition, at)
            if isinstance(definition, Binding):
                self.found.followed.add(id(expr))
                self.found.consumed.append(definition)
                expr, at = definition.value, definition.statement
            elif isinstance(definition, GuardedBinding):
                self.found.followed.add(id(expr))
                return definition, at
            elif strict and isinstance(definition, OpaqueBinding) and not isinstance(
                    definition.statement, cst.SimpleStatementLine):
                inner = self.m.flow.block_binding(expr.value, definition.statement)
                if inner is not None:
                    self.found.followed.add(id(expr))
                    return BlockMask(definition.statement, inner), at
                raise Refused(self.ctx.line(definition.statement),
                              _unfollowed_block(self.ctx, expr.value, definition.statement),
                              "compute the mask and the scores in plain statements")
            elif strict and isinstance(definition, OpaqueBinding) and _chained(definition.statement):
                others = [self.ctx.code(t.target) for t in definition.statement.body[0].targets
                          if self.ctx.code(t.target) != expr.value]
                raise Refused(self.ctx.line(definition.statement), (
                    f"the scores `{expr.value}` are bound in the chained assignment "
                    f"`{_short(self.ctx.code(definition.statement))}` (line "
                    f"{self.ctx.line(definition.statement)}): {', '.join(f'`{o}`' for o in others)} "
                    "also holds them, and SDPA never materialises the scores"),
                    "bind the scores to one name")
            else:
                break
        return expr, at

    def _helper_masks(self, name: str, definition: Binding, at) -> None:
        """Calls between `definition` and `at` that change the scores in place through a project
        helper (`if self.mask: mask_(scores, maskval=-inf)`): each one that fills a triangle becomes a
        mask of the chain; one that does anything else is refused, naming it."""
        for use in self.m.flow.uses(definition):
            statement = self.m.flow.statement_of(use)
            if id(use) in self.found.followed or statement is None or not self.ctx.line(statement) < self.ctx.line(at):
                continue
            placed = self._helper_call(use, statement, definition.statement)
            if placed is None:
                continue  # not a call on its own line: check_uses says what it is
            call, guard, top = placed
            helper = in_place_triangle(self.ctx, call, self.m.cls)
            if helper is None:
                continue
            line = self.line(call, statement)
            if isinstance(helper, UnknownHelper):
                raise Refused(line, f"`{name}` is passed to `{helper.name}(...)` at line {line}, whose body "
                              f"({helper.where}) does more than fill one triangle of it in place",
                              "inline what the helper does to the scores as a masked_fill")
            hides = self._hiding_value(helper.value) if helper.value_is_callers else helper.hides_by_itself()
            if not hides:
                raise Refused(line, f"`{helper_name(self.ctx, call)}(...)` at line {line} fills the scores with "
                              "a value that is not -inf or a large negative number", "fill with float('-inf')")
            if _product_operands(self.ctx, definition.value) is None and not isinstance(
                    definition.value, cst.BinaryOperation):
                raise Refused(line, f"`{helper_name(self.ctx, call)}(...)` at line {line} changes `{name}` in "
                              f"place, and `{name}` may share its memory with another tensor (line "
                              f"{self.ctx.line(definition.statement)})", "")
            self.found.followed.add(id(use))
            self.found.masks.append(Mask("fill", call, statement, guard=guard, helper_region=helper.region))
            if guard is not None:
                self.moves.append((guard, top))
            self.found.extra_removed.append(top)

    def _helper_call(self, use: cst.Name, statement, anchor):
        """(call, guard test or None, statement to remove) when `use` is the first argument of a call
        alone on its line, optionally as the only statement of `if test:` without else, in the
        block of `anchor`."""
        arg = self.ctx.parents.get(use)
        call = self.ctx.parents.get(arg) if isinstance(arg, cst.Arg) else None
        if not (isinstance(call, cst.Call) and call.args and call.args[0] is arg and arg.keyword is None
                and isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1
                and isinstance(statement.body[0], cst.Expr) and statement.body[0].value is call):
            return None
        guard, top = None, statement
        block = self.ctx.parents.get(statement)
        owner = self.ctx.parents.get(block)
        if isinstance(owner, cst.If) and owner.orelse is None and len(block.body) == 1:
            guard, top = owner.test, owner
        if self.ctx.parents.get(top) is not self.ctx.parents.get(anchor):
            return None
        return call, guard, top

    def dropout(self, expr, at):
        if isinstance(expr, GuardedBinding):
            return self._optional_dropout(expr, at)
        names = self.ctx.names
        if isinstance(expr, cst.Call) and expr.args:
            sub = self.m.cls.submodule_of(expr.func)
            if sub is not None and sub.callee == "torch.nn.Dropout":
                self.found.dropout = Dropout(f"{self.ctx.code(expr.func)}.p", "self.training")
                return self.follow(expr.args[0].value, at)
            if names.is_call(expr, *_DROPOUT):
                self.found.dropout = self._functional_dropout(expr, at)
                return self.follow(expr.args[0].value, at)
            if sub is not None and sub.callee not in ("torch.nn.Softmax",):
                inner, _ = self.follow(expr.args[0].value, at) if len(expr.args) == 1 else (None, None)
                if self._is_softmax(inner):
                    raise Refused(self.line(expr, at), f"the attention probabilities pass through "
                                  f"`{self.ctx.code(expr.func)}`, which is not a dropout",
                                  "SDPA can only fold a dropout on the probabilities")
        return expr, at

    def _optional_dropout(self, guarded: GuardedBinding, at):
        """`if dropout is not None: p = dropout(p)` with `dropout` a parameter of the function (a
        dropout module passed in, or None): SDPA drops with its rate only when it is given and in
        training mode, as the module itself would."""
        value = guarded.binding.value
        test = guarded.test
        module = value.func if isinstance(value, cst.Call) else None
        if not (isinstance(module, cst.Name) and len(value.args) == 1 and value.args[0].keyword is None
                and isinstance(value.args[0].value, cst.Name) and value.args[0].value.value == guarded.name
                and module.value in _parameters(self.m.function)
                and self.m.flow.definition(module.value, guarded.statement) is None
                and self.ctx.code(test).replace(" ", "") == f"{module.value}isnotNone"):
            return guarded, at
        self.found.consumed.append(guarded)
        self.found.followed.update({id(module), id(value.args[0].value)})
        self.found.followed.update(id(n) for n in find(test, _is_name))
        name = module.value
        self.found.dropout = Dropout(f"{name}.p", f"{name} is not None and {name}.training")
        self.moves.append((test, guarded.statement))
        return self.follow(value.args[0].value, guarded.binding.statement)

    def _functional_dropout(self, call: cst.Call, at) -> Dropout:
        p = argument(call, 1, "p")
        training = argument(call, 2, "training" if self.ctx.names.callee(call) != "torch.dropout" else "train")
        self.moves.extend((e, at) for e in (p, training) if e is not None)
        return Dropout(self.ctx.code(p) if p is not None else "0.5",
                       self.ctx.code(training) if training is not None else None)

    def _is_softmax(self, expr) -> bool:
        try:
            self._softmax_parts(expr)
            return True
        except (NotAttention, Refused):
            return False

    def _softmax_parts(self, expr):
        """(input, dim expression) of a softmax call, or NotAttention."""
        if not isinstance(expr, cst.Call):
            raise NotAttention
        names = self.ctx.names
        if names.is_call(expr, *_SOFTMAX) and expr.args:
            extra = argument(expr, 3 if names.callee(expr) == "torch.nn.functional.softmax" else 2, "dtype")
            if extra is not None and not (self.found.softmax_cast_to is not None and self._is_float32(extra)):
                raise Refused(self.line(expr), "the softmax computes in another dtype (dtype=) without "
                              "casting the probabilities back to the scores' dtype",
                              "cast back with .type_as(scores), or drop the dtype argument")
            return expr.args[0].value, argument(expr, 1, "dim")
        sub = self.m.cls.submodule_of(expr.func, "torch.nn.Softmax")
        if sub is not None and len(expr.args) == 1:
            return expr.args[0].value, argument(sub.call, 0, "dim")
        if isinstance(expr.func, cst.Call) and names.is_call(expr.func, "torch.nn.Softmax") and len(expr.args) == 1:
            return expr.args[0].value, argument(expr.func, 0, "dim")  # `nn.Softmax(dim=-1)(w)` built inline
        receiver = method_call(expr, "softmax")
        is_self = isinstance(receiver, cst.Name) and receiver.value == "self"
        if receiver is not None and not is_self and names.imported(expr.func) is None:
            return receiver, argument(expr, 0, "dim")
        raise NotAttention

    def softmax(self, expr, at):
        if isinstance(expr, GuardedBinding):
            raise NotAttention
        expr = self._cast_back(expr)
        inner, dim = self._softmax_parts(expr)
        self.found.softmax_line = self.line(expr, at)
        if self.found.softmax_cast_to is not None:
            inner = self._upcast(inner)
        inner, at = self.follow(inner, at, strict=True)
        return inner, at, int_value(dim)

    def _cast_back(self, expr):
        """`softmax(...).type_as(t)`, `.to(t.dtype)`, `.type(t.dtype)`: the softmax, noting `t`."""
        receiver = method_call(expr, "type_as", "to", "type")
        if receiver is None or len(expr.args) != 1 or expr.args[0].keyword is not None:
            return expr
        target = expr.args[0].value
        if expr.func.attr.value != "type_as":
            if not (isinstance(target, cst.Attribute) and target.attr.value == "dtype"):
                return expr
            target = target.value
        self.found.softmax_cast_to = self.ctx.code(target)  # lets the softmax carry dtype=float32
        if not self._is_softmax(receiver):
            self.found.softmax_cast_to = None
            return expr
        self.found.followed.update(id(n) for n in find(target, _is_name))  # the cast goes away
        return receiver

    def _upcast(self, expr):
        """`s.float()`, `s.to(torch.float32)`, `s.type(torch.float32)` -> s; anything else as it is."""
        receiver = method_call(expr, "float", "to", "type")
        if receiver is None:
            return expr
        if expr.func.attr.value == "float":
            return receiver if not expr.args else expr
        if len(expr.args) == 1 and expr.args[0].keyword is None and self._is_float32(expr.args[0].value):
            return receiver
        return expr

    def _is_float32(self, expr) -> bool:
        return self.ctx.names.imported(expr) in ("torch.float32", "torch.float")

    def check_cast_back(self) -> None:
        """The probabilities must return to the dtype SDPA computes in: that of q, k or v (or of the
        scores, which is q's): another dtype would change what the product with v sees."""
        target = self.found.softmax_cast_to
        if target is None:
            return
        scores = {self.ctx.code(d.value) for d in self.found.consumed if isinstance(d, Binding)}
        scores |= {d.name for d in self.found.consumed if isinstance(d, Binding)}
        operands = {self.ctx.code(o.expr) for o in (self.found.query, self.found.key, self.found.value)}
        if target not in operands | scores:
            raise Refused(self.ctx.line(self.found.statement), f"the softmax is computed in float32 and "
                          f"cast to the dtype of `{target}`, which is not provably the dtype of q, k and v",
                          "cast back with .type_as(scores)")

    def scores(self, expr, at, dim: int | None) -> None:
        """Peel masks and scales off the scores until the q·k product."""
        scaled = False
        while True:
            if isinstance(expr, GuardedBinding):
                expr, at = self._guarded_mask(expr, scaled)
                continue
            if isinstance(expr, BlockMask):
                expr, at = self._block_mask(expr)
                continue
            if self.found.softmax_cast_to is not None and self._upcast(expr) is not expr:
                expr, at = self.follow(self._upcast(expr), at, strict=True)  # `s = s.float()` before it
                continue
            step = self._modifier(expr, at, scaled)
            if step is None:
                break
            expr, scaled_now = step
            scaled = scaled or scaled_now
            expr, at = self.follow(expr, at, strict=True)
        self._qk(expr, at, dim)

    def _guarded_mask(self, guarded: GuardedBinding, scaled: bool):
        self.found.consumed.append(guarded)
        value, at = guarded.binding.value, guarded.binding.statement
        step = self._modifier(value, at, scaled)
        if step is None or not self.found.masks or self.found.masks[-1].at is not at:
            raise Refused(self.ctx.line(guarded.statement), f"the scores `{guarded.name}` are set to "
                          f"`{_short(self.ctx.code(value))}` under `if {_short(self.ctx.code(guarded.test))}:` "
                          f"(line {self.ctx.line(guarded.statement)}), which is not a mask (a masked_fill or an "
                          "added mask)", "")
        self.found.masks[-1].guard = guarded.test
        self.moves.append((guarded.test, guarded.statement))
        base, _ = step
        if not (isinstance(base, cst.Name) and base.value == guarded.name):
            raise NotAttention
        self.found.followed.add(id(base))
        return self.follow(base, at, strict=True)

    def _block_mask(self, block: BlockMask):
        """A fill inside an `if` block that also does other work: the block stays, the fill there
        becomes the mask's computation (so it reads the names as they are at that point)."""
        binding = block.binding
        before = len(self.moves)
        step = self._modifier(binding.value, binding.statement, False)
        if step is None or not self.found.masks or self.found.masks[-1].at is not binding.statement \
                or self.found.masks[-1].kind != "fill":
            raise Refused(self.ctx.line(binding.statement), f"`{binding.name}` is set to "
                          f"`{_short(self.ctx.code(binding.value))}` inside the `if` block at line "
                          f"{self.ctx.line(block.statement)}, which is not a masked_fill",
                          "compute the mask and the scores in plain statements")
        del self.moves[before:]  # the condition is evaluated where it was, not at the call
        self.found.masks[-1].block = block.statement
        self.found.block_bindings.append(binding)
        base, _ = step
        if not (isinstance(base, cst.Name) and base.value == binding.name):
            raise NotAttention
        self.found.followed.add(id(base))
        return self.follow(base, binding.statement, strict=True)

    def _modifier(self, expr, at, scaled: bool):
        """One mask or scale step: returns (the scores it applies to, whether it scales)."""
        receiver = method_call(expr, "masked_fill")
        if receiver is not None and len(expr.args) == 2:
            condition, value = expr.args[0].value, expr.args[1].value
            if not (self._hiding_value(value) or self._hiding_name(value, at)):
                raise Refused(self.line(expr, at), f"mask fill value `{self.ctx.code(value)}` is not "
                              "-inf or a large negative number", "fill with float('-inf') or -1e9")
            self.found.followed.update(id(n) for n in find(value, _is_name))  # the fill value goes away
            self.found.masks.append(Mask("fill", condition, at, scaled_after=scaled))
            self.moves.append((condition, at))
            return receiver, False
        arithmetic = _arithmetic(expr)
        if arithmetic is None:
            return None
        operator, left, right = arithmetic
        if operator == "+":
            self.found.masks.append(Mask("add", right, at, scaled_after=scaled))
            self.moves.append((right, at))
            return left, False
        scores, factor = left, right
        if operator == "*" and self._scalar(left, at) and not self._scalar(right, at):
            scores, factor = right, left
        if not self._scalar(factor, at):
            raise Refused(self.line(expr, at), f"`{self.ctx.code(factor)}` scales the scores but is "
                          "not provably a Python number", "SDPA's scale must be a float")
        self.found.scale.append((operator, factor, at))
        self.moves.append((factor, at))
        return scores, True

    def _hiding_name(self, value: cst.BaseExpression, at) -> bool:
        """`neg = -torch.finfo(s.dtype).max` bound just for the fill: the binding goes with it."""
        if not (isinstance(value, cst.Name) and self.m.flow.contains(at)):
            return False
        definition = self.m.flow.definition(value.value, at)
        if not (isinstance(definition, Binding) and self._hiding_value(definition.value)):
            return False
        if {id(u) for u in self.m.flow.uses(definition)} == {id(value)}:  # else it stays, and must
            self.found.consumed.append(definition)  # not read what the chain removes
            self.found.followed.update(id(n) for n in find(definition.value, _is_name))
        return True

    def _hiding_value(self, value: cst.BaseExpression) -> bool:
        number = number_value(value)
        if number is not None:
            return number <= -1e4
        if isinstance(value, cst.UnaryOperation) and isinstance(value.operator, cst.Minus):
            top = value.expression  # -finfo(dtype).max is finfo(dtype).min
            if isinstance(top, cst.Attribute) and top.attr.value == "max" and isinstance(top.value, cst.Call):
                return self.ctx.names.is_call(top.value, "torch.finfo")
        code = "".join(self.ctx.code(value).split()).replace('"', "'")  # a call split over lines too
        if code in ("float('-inf')", "-float('inf')", "-math.inf", "-torch.inf", "-np.inf",
                    "-numpy.inf", "float('-infinity')"):
            return True
        receiver = value.value if isinstance(value, cst.Attribute) and value.attr.value == "min" else None
        return isinstance(receiver, cst.Call) and self.ctx.names.is_call(receiver, "torch.finfo")

    def _scalar(self, expr: cst.BaseExpression, at) -> bool:
        return self.m.shapes.is_number(expr, at)

    def _qk(self, expr, at, dim: int | None) -> None:
        operands = _product_operands(self.ctx, expr)
        if operands is None:
            raise NotAttention
        kind, q, k, spec = operands
        if kind == "baddbmm":
            self._baddbmm(expr, at)
            kind = "bmm"
        q, at_q = self._prescaled(q, at)
        if kind == "einsum":
            parsed = einsum.scores(spec)
            if parsed is None:
                raise NotAttention
            rank = proven = None if einsum.has_ellipsis(spec) else len(spec.output)
            self.found.query = Operand(q, at_q, _suffix(parsed.q_order))
            self.found.key = Operand(k, at, _suffix(parsed.k_order))
        else:
            ranks = (3, 3) if kind == "bmm" else (self.m.shapes.rank(q, at), self.m.shapes.rank(k, at))
            rank = ranks[0] or ranks[1]
            # matmul broadcasts: the scores' rank is proven only when both operands have it
            proven = ranks[0] if ranks[0] == ranks[1] else None
            self.found.query = Operand(q, at_q)
            self.found.key = self._key(k, at, kind, rank)
        if dim is None or not (dim == -1 or (proven is not None and dim == proven - 1)):
            raise NotAttention
        self.found.rank = rank

    def _baddbmm(self, call: cst.Call, at) -> None:
        """`torch.baddbmm(empty, q, k^T, beta=0, alpha=s)` is `s * (q @ k^T)`: with beta 0 the first
        argument is never read (not even its NaNs), so it may go when it is only an allocation."""
        keywords = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
        beta, alpha = keywords.pop("beta", None), keywords.pop("alpha", None)
        if keywords or beta is None or number_value(beta) != 0:
            raise NotAttention  # beta != 0 adds the first argument (a bias): not a plain product
        if not self._allocation(call.args[0].value):
            raise Refused(self.line(call, at), f"the scores add `{self.ctx.code(call.args[0].value)}` "
                          "with beta=0; tf-migrate drops it only when it is a plain allocation",
                          "pass torch.empty(...) as baddbmm's first argument")
        if alpha is not None and number_value(alpha) != 1:
            if not self._scalar(alpha, at):
                raise Refused(self.line(call, at), f"baddbmm's alpha `{self.ctx.code(alpha)}` scales the "
                              "scores but is not provably a Python number", "SDPA's scale must be a float")
            self.found.scale.append(("*", alpha, at))
            self.moves.append((alpha, at))

    def _allocation(self, expr) -> bool:
        if isinstance(expr, (cst.Name, cst.Attribute)):
            return True
        return isinstance(expr, cst.Call) and self.ctx.names.is_call(
            expr, *(f"torch.{f}" for f in ("empty", "zeros", "ones", "empty_like", "zeros_like", "ones_like")))

    def _prescaled(self, q, at):
        """Fold `q / t` in the product, or a `q = q * s` statement used only here, into the scale."""
        if isinstance(q, cst.Name) and self.m.flow.contains(at):
            definition = self.m.flow.definition(q.value, at)
            # `q *= s` scales in place a tensor other names may share (a view of qkv): it stays
            in_place = isinstance(definition, Binding) and isinstance(definition.statement.body[0], cst.AugAssign)
            if (isinstance(definition, Binding) and not in_place
                    and self._scaling(definition.value, definition.statement, q.value)
                    and {id(u) for u in self.m.flow.uses(definition)} == {id(q)}):
                self.found.followed.add(id(q))
                self.found.consumed.append(definition)
                q, at = definition.value, definition.statement
        scaling = self._scaling(q, at)
        if scaling is not None:
            operator, tensor, factor = scaling
            self.found.scale.append((operator, factor, at))
            self.moves.append((factor, at))
            return tensor, at
        return q, at

    def _scaling(self, expr, at, name: str | None = None):
        """(operator, tensor, number) of `x * number` or `x / number` (x named `name`, if given)."""
        arithmetic = _arithmetic(expr)
        if arithmetic is None or arithmetic[0] == "+":
            return None
        operator, tensor, factor = arithmetic
        if name is not None and not (isinstance(tensor, cst.Name) and tensor.value == name):
            return None
        if self._scalar(factor, at) and not self._scalar(tensor, at):
            return operator, tensor, factor
        return None

    def _key(self, k, at, kind: str, rank: int | None) -> Operand:
        """k as SDPA wants it, (batch..., seq, dim), undoing the transpose of `q @ k^T`."""
        if isinstance(k, cst.Attribute) and k.attr.value == "mT":
            return Operand(k.value, at)
        receiver = method_call(k, "transpose")
        if receiver is not None and len(k.args) == 2:
            dims = {int_value(a.value) for a in k.args}
            last_two = {frozenset({-2, -1})}
            if kind == "bmm":
                last_two.add(frozenset({1, 2}))
            if kind == "matmul" and rank in (None, 4):
                last_two.add(frozenset({2, 3}))  # matmul attention with transpose(2, 3) is 4-D
            if rank is not None:
                last_two.add(frozenset({rank - 2, rank - 1}))
            if frozenset(dims) in last_two:
                return Operand(receiver, at)
        return Operand(k, at, ".transpose(-2, -1)")

    def product(self, kind: str, v, spec, statement) -> None:
        if kind == "einsum":
            parsed = einsum.product(spec, self.found.rank or len(spec.inputs[0]))
            if parsed is None:
                raise NotAttention
            self.found.value = Operand(v, statement, _suffix(parsed.v_order))
            self.found.output_suffix = _suffix(parsed.out_order)
        else:
            self.found.value = Operand(v, statement)

    def check_uses(self) -> None:
        """Every binding the chain removes must be read by the chain alone."""
        escaping = _escaping_names(self.ctx, self.m.function)
        for definition in self.found.consumed + self.found.block_bindings:
            binding = definition.binding if isinstance(definition, GuardedBinding) else definition
            if binding.name in escaping or "locals()" in escaping:
                what = "the function reads `locals()`" if "locals()" in escaping else \
                    f"`{binding.name}` is declared global or nonlocal"
                raise Refused(self.ctx.line(binding.statement), f"{what}: the attention "
                              f"{self._stage(binding)} may be read outside this function",
                              "SDPA does not return the attention probabilities")
            uses = [u for u in self.m.flow.uses(binding) if id(u) not in self.found.followed]
            consumed = {id(d.statement) for d in self.found.consumed}
            # Reading .dtype/.shape/.device/.size() is not a use of the values: inside the chain it
            # goes with the chain; after it, the name is gone, which is a different refusal.
            values = [u for u in uses if _metadata_read(self.ctx, u) is None and not self._returned_beside(u)]
            outside = [u for u in uses if _metadata_read(self.ctx, u) is not None
                       and id(self.m.flow.statement_of(u)) not in consumed]
            for use in values[:1]:
                raise Refused(self.ctx.line(use), *_describe_use(self.ctx, self.m.flow, use, binding.name,
                                                                 self._stage(binding)))
            outside = [u for u in outside if not self._shape_assertion(u)]
            for use in outside[:1]:
                raise Refused(self.ctx.line(use), (
                    f"`{_metadata_read(self.ctx, use)}` is read at line {self.ctx.line(use)}, outside "
                    f"the chain: SDPA never materialises `{binding.name}`"),
                    "read the shape, dtype or device from q, k or v instead")

    def _stage(self, binding) -> str:
        """What a chain binding holds: "scores" before the softmax's line, "probabilities" from it on."""
        line = self.ctx.line(binding.statement)
        return "probabilities" if not self.found.softmax_line or line >= self.found.softmax_line else "scores"

    def _returned_beside(self, use: cst.Name) -> bool:
        """`return <the product>, use` (the probabilities beside the output), when allowed."""
        statement = self.m.flow.statement_of(use)
        element = self.ctx.parents.get(use)
        tuple_ = self.ctx.parents.get(element)
        if self.found.returned is not None:
            return self.found.returned[0] is element  # the same read, reached from another binding
        if not (self.m.allow_returned and isinstance(element, cst.Element) and isinstance(tuple_, cst.Tuple)
                and isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1
                and isinstance(statement.body[0], cst.Return) and statement.body[0].value is tuple_
                and not any(isinstance(e, cst.StarredElement) for e in tuple_.elements)):
            return False
        if not any(self._holds_product(e.value, statement) for e in tuple_.elements if e is not element):
            return False
        self.found.returned = (element, list(tuple_.elements).index(element), len(tuple_.elements))
        return True

    def _holds_product(self, expr: cst.BaseExpression, at: cst.BaseStatement) -> bool:
        """`expr` contains the product with v, or is a name bound to it (`out = p @ v`) that reaches `at`."""
        if at is self.found.statement:
            return any(n is self.found.product for n in find(expr, lambda n: True))
        if not isinstance(expr, cst.Name):
            return False
        definition = self.m.flow.definition(expr.value, at)
        return isinstance(definition, Binding) and definition.statement is self.found.statement \
            and definition.value is self.found.product

    def _shape_assertion(self, use: cst.Name) -> bool:
        """`assert scores.size() == (...)` between the scores and the product only checks the shape
        of a tensor SDPA no longer builds: it goes with the chain (the note says so)."""
        statement = self.m.flow.statement_of(use)
        if not (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1
                and isinstance(statement.body[0], cst.Assert)):
            return False
        lines = [self.ctx.line(d.statement) for d in self.found.consumed]
        if not lines or not min(lines) < self.ctx.line(statement) < self.ctx.line(self.found.statement):
            return False
        if self.ctx.parents.get(statement) is not self.ctx.parents.get(self.found.statement):
            return False
        if statement not in self.found.extra_removed:
            self.found.extra_removed.append(statement)
            self.found.notes.append(f"shape assertion on the scores at line {self.ctx.line(statement)} removed")
        return True

    def check_moves(self) -> None:
        """Expressions moved into the SDPA call must mean the same at the call."""
        target = self.found.statement
        operands = [self.found.query, self.found.key]
        moved = self.moves + [(o.expr, o.at) for o in operands if o is not None]
        for expr, at in moved:
            for name in read_names(expr) - {"self"}:
                if not self.m.flow.contains(at):
                    continue
                rebinding = self._reaching(name, target)
                if self._reaching(name, at) is not rebinding:
                    where = f" at line {self.ctx.line(rebinding)}" if rebinding is not None else ""
                    raise Refused(self.ctx.line(at), f"`{name}` is rebound{where}, between the scores and "
                                  "the product", "")
                changed = self.m.flow.mutation_between(name, at, target)
                if changed is not None:
                    raise Refused(self.ctx.line(changed), f"`{name}` is changed in place at line "
                                  f"{self.ctx.line(changed)}, between the scores and the product", "")

    def _reaching(self, name: str, at):
        """The statement whose binding of `name` reaches `at` once the chain's statements are gone."""
        removed = {id(d.statement) for d in self.found.consumed}
        definition = self.m.flow.definition(name, at)
        while definition is not None and id(definition.statement) in removed:
            definition = self.m.flow.definition(name, definition.statement)
        return None if definition is None else definition.statement


_OPERATORS = {cst.Add: "+", cst.Multiply: "*", cst.Divide: "/"}
_METHODS = {"add": "+", "mul": "*", "div": "/"}


def _arithmetic(expr: cst.CSTNode):
    """(operator, left, right) of `a + b`, `a * b`, `a / b` and of `a.add(b)`, `a.mul(b)`, `a.div(b)`."""
    if isinstance(expr, cst.BinaryOperation) and type(expr.operator) in _OPERATORS:
        return _OPERATORS[type(expr.operator)], expr.left, expr.right
    receiver = method_call(expr, *_METHODS)
    if receiver is not None and len(expr.args) == 1 and expr.args[0].keyword is None:
        return _METHODS[expr.func.attr.value], receiver, expr.args[0].value
    return None


def _escaping_names(ctx: "FileContext", function: cst.FunctionDef) -> set[str]:
    """Names another scope can read: `global`/`nonlocal` ones, and "locals()" if the function
    hands out its whole namespace (`locals()`, `vars()`)."""
    found: set[str] = set()
    for node in find_types(function.body, (cst.Global, cst.Nonlocal, cst.Call), into_scopes=False):
        if isinstance(node, (cst.Global, cst.Nonlocal)):
            found.update(item.name.value for item in node.names)
        elif isinstance(node, cst.Call) and ctx.names.builtin(node.func) in ("builtins.locals", "builtins.vars") and not node.args:
            found.add("locals()")
    return found


def _parameters(function: cst.FunctionDef) -> set[str]:
    params = function.params
    return {p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)}


def helper_name(ctx: "FileContext", call: cst.Call) -> str:
    return ctx.code(call.func)


def _is_name(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.Name)


def _suffix(order: tuple[int, ...]) -> str:
    return "" if einsum.is_identity(order) else einsum.as_method(order)


_METADATA = ("dtype", "shape", "device", "ndim", "size", "dim")


def _metadata_read(ctx: "FileContext", use: cst.Name) -> str | None:
    """`x.dtype` (or .shape, .device, .ndim, .size(), .dim()) when `use` is read only for that."""
    parent = ctx.parents.get(use)
    like = _like_call(ctx, use, parent)
    if like is not None:
        return like
    if not (isinstance(parent, cst.Attribute) and parent.value is use and parent.attr.value in _METADATA):
        return None
    if parent.attr.value in ("size", "dim"):
        call = ctx.parents.get(parent)
        return f"{use.value}.{parent.attr.value}()" if isinstance(call, cst.Call) and call.func is parent else None
    return f"{use.value}.{parent.attr.value}"


def _like_call(ctx: "FileContext", use: cst.Name, parent: cst.CSTNode | None) -> str | None:
    """`torch.ones_like(x)` (census.META_FUNCTIONS) when `use` is its first argument, or
    `m.expand_as(x)` (census.META_ARGUMENT_METHODS) when it is the only one: they read the shape,
    dtype or device of `x`, not its values."""
    call = ctx.parents.get(parent) if isinstance(parent, cst.Arg) else None
    if not (isinstance(call, cst.Call) and call.args and call.args[0] is parent
            and parent.keyword is None and parent.star == ""):
        return None
    if len(call.args) == 1 and method_call(call, *META_ARGUMENT_METHODS) is not None:
        return f"{ctx.code(call.func)}({use.value})"  # `mask.expand_as(scores)`: its shape only
    callee = ctx.names.callee(call) or ""
    module, _, name = callee.rpartition(".")
    if module != "torch" or name not in META_FUNCTIONS:
        return None
    return f"torch.{name}({use.value})"


def _stored_by_method(ctx: "FileContext", call: cst.Call) -> str | None:
    """`X` when `call` is `self.m(value)` and method `m` of the enclosing class only keeps its
    parameter as `self.X = param` (`save_attention_map`), else None."""
    name = self_attribute(call.func)
    current = ctx.parents.get(call)
    while current is not None and not isinstance(current, cst.ClassDef):
        current = ctx.parents.get(current)
    if name is None or current is None or not isinstance(current.body, cst.IndentedBlock):
        return None
    method = next((m for m in current.body.body if isinstance(m, cst.FunctionDef) and m.name.value == name), None)
    if method is None or not isinstance(method.body, cst.IndentedBlock) or len(method.body.body) != 1:
        return None
    params = [p.name.value for p in method.params.params[1:]]
    line = method.body.body[0]
    small = line.body[0] if isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1 else None
    if isinstance(small, cst.Assign) and len(small.targets) == 1 and self_attribute(small.targets[0].target) \
            and isinstance(small.value, cst.Name) and small.value.value in params:
        return self_attribute(small.targets[0].target)
    return None


def _rebound(ctx: "FileContext", use: cst.Name, small: cst.CSTNode | None) -> str | None:
    """"bound to `kept`" when `use` is read by an assignment to other names (`kept, out = p, p @ v`,
    `(kept := p)`): another name holds the values SDPA never materialises."""
    current: cst.CSTNode | None = use
    while current is not None and current is not small:
        parent = ctx.parents.get(current)
        if isinstance(parent, cst.NamedExpr) and parent.value is current:
            return f"bound to `{ctx.code(parent.target)}` by `:=`"
        current = parent
    if isinstance(small, cst.Assign):
        return "bound to `" + " = ".join(ctx.code(t.target) for t in small.targets) + "`"
    if isinstance(small, cst.AnnAssign):
        return f"bound to `{ctx.code(small.target)}`"
    return None


def _chained(statement: cst.BaseStatement) -> bool:
    """`a = b = value`: one statement, two or more targets."""
    return isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 \
        and isinstance(statement.body[0], cst.Assign) and len(statement.body[0].targets) > 1


def _short(code: str, limit: int = 80) -> str:
    """Code quoted in a message: one line, cut at `limit` characters."""
    code = " ".join(code.split())
    return code if len(code) <= limit else code[:limit - 3] + "..."


def _unfollowed_block(ctx: "FileContext", name: str, statement: cst.BaseStatement) -> str:
    """Why the chain stops at a compound statement that binds `name`: which block, and what of it."""
    bare = statement.with_changes(leading_lines=()) if hasattr(statement, "leading_lines") else statement
    header = ctx.code(bare).strip().splitlines()[0].strip()  # the `if ...:` line, not a comment above it
    where = f"`{header}` (line {ctx.line(statement)})"
    if isinstance(statement, cst.If) and isinstance(statement.body, cst.IndentedBlock):
        if statement.orelse is not None:
            return (f"`{name}` is rebound inside {where}, which has an else branch: tf-migrate follows an "
                    "`if` without else that binds it once")
        binding = [child for child in statement.body.body if binds(child, name)]
        if len(binding) > 1:
            return (f"`{name}` is rebound by {len(binding)} statements inside {where}: tf-migrate follows an "
                    "`if` block that binds it once")
        if not binding or not isinstance(binding[0], cst.SimpleStatementLine):
            return (f"`{name}` is rebound in a block nested inside {where}: tf-migrate follows one "
                    "assignment directly in the `if` block")
        return (f"`{name}` is rebound inside {where} by a statement that is not a plain assignment: "
                "tf-migrate follows one `name = ...` directly in the `if` block")
    kind = type(statement).__name__.lower().replace("async", "async ")
    return f"`{name}` is rebound inside a `{kind}` statement {where}: tf-migrate follows plain statements and `if` blocks"


def _describe_use(ctx: "FileContext", flow: FunctionFlow, use: cst.Name, name: str,
                  stage: str = "probabilities") -> tuple[str, str]:
    """(reason, hint) for a use of the chain's value outside the chain."""
    statement = flow.statement_of(use)
    small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) else None
    parent = ctx.parents.get(use)
    if isinstance(parent, cst.Attribute) and parent.value is use and parent.attr.value.endswith("_") \
            and isinstance(ctx.parents.get(parent), cst.Call):
        call = ctx.parents[parent]
        out_of_place = f"{name} = {name}.{parent.attr.value[:-1]}(...)"
        return (f"`{name}` is changed in place by `{ctx.code(call)}` at line {ctx.line(use)}; "
                f"tf-migrate folds the out-of-place form `{out_of_place}`", f"write it as `{out_of_place}`")
    hint = "SDPA does not return the attention probabilities; keep this attention as it is, or stop using them there"
    if isinstance(small, cst.Return):
        what = "returned"
    elif isinstance(small, cst.Assign) and any(self_attribute(t.target) for t in small.targets):
        what = "stored on self"
    elif "append(" in ctx.code(statement) or "extend(" in ctx.code(statement):
        what = "appended to a list"
    else:
        arg = parent if isinstance(parent, cst.Arg) else None
        call = ctx.parents.get(arg) if arg is not None else None
        if isinstance(call, cst.Call) and not isinstance(small, cst.Return):
            kept = _stored_by_method(ctx, call)
            if kept is not None:
                return (f"the attention {stage} `{name}` are passed to `{ctx.code(call.func)}(...)` at line "
                        f"{ctx.line(use)}, which stores them in `self.{kept}`", hint)
            return (f"`{name}` is passed to `{ctx.code(call.func)}(...)` at line {ctx.line(use)}, which may "
                    "read or change it in place (tf-migrate does not read that function)",
                    "inline what the function does to the scores, e.g. a masked_fill")
        what = _rebound(ctx, use, small) or "read again"
    return f"the attention {stage} `{name}` are {what} at line {ctx.line(use)}", hint
