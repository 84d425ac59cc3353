"""Residual sublayers inside one method of a block: post-norm `x = norm(x + f(x))`, pre-norm
`x = x + f(norm(x))`, each in one expression or spread over statements.

A sublayer is found from its residual add `r + b`: `r` is a name, and `b` (the branch), read
back through the statements that compute it, reads the same value as `r`. The reads of that
value inside the branch are the sublayer's inputs: pre-norm when they pass through a norm,
post-norm when the add itself goes straight into a norm. Anything less clear is `Unprovable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Hashable

import libcst as cst

from tf_migrate.analysis.dataflow import (Binding, FunctionFlow, GuardedBinding, OpaqueBinding, chained_binding,
                                          loads)
from tf_migrate.analysis.nodes import PerNode, find, find_types
from tf_migrate.rules.prenorm.layer_loop import listed_norm
from tf_migrate.rules.prenorm.norm_names import inherited_norm, project_norm
from tf_migrate.rules.prenorm.tree import NORMS, norm_class

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass


MAX_ADDS_PER_STATEMENT = 100


class Unprovable(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class FlagChosen(Unprovable):
    """A flag of the block (`self.normalize_before`) chooses pre- or post-norm at run time."""

    @property
    def flag(self) -> str:
        return self.reason.split("`self.", 1)[1].rstrip("`")


_FLAG_WORDS = ("before", "pre", "first")


def _position_flag(test: cst.BaseExpression) -> str | None:
    """`self.normalize_before` / `not self.pre_norm`: the attribute when its name says where the
    norm goes (before, pre, first), else None."""
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        test = test.expression
    if isinstance(test, cst.Attribute) and isinstance(test.value, cst.Name) and test.value.value == "self":
        name = test.attr.value
        return name if any(word in name.lower() for word in _FLAG_WORDS) else None
    return None


@dataclass
class PostNorm:
    norm: str  # attribute of the norm module: self.<norm>
    call: cst.Call  # self.<norm>(...)
    statement: cst.SimpleStatementLine  # where the norm is applied
    add: cst.BinaryOperation  # the residual add
    inline: bool  # the add is the norm's argument itself (else a name bound to it)
    inputs: list[cst.Name]  # reads of the sublayer input inside the branch
    statements: list[cst.SimpleStatementLine]  # every statement of the sublayer


@dataclass
class Sublayers:
    post: list[PostNorm] = field(default_factory=list)
    pre: list[int] = field(default_factory=list)  # lines of pre-norm residual adds
    pre_norms: list[cst.Call] = field(default_factory=list)  # the norms of pre-norm inputs
    plain: list[int] = field(default_factory=list)  # lines of residual adds with no norm at all


@dataclass
class _Branch:
    inputs: list[cst.Name] = field(default_factory=list)
    through: list[tuple[Binding, cst.Name]] = field(default_factory=list)


class ResidualFinder:
    def __init__(self, ctx: "FileContext", cls: "ModuleClass", method: cst.FunctionDef) -> None:
        self.ctx, self.cls, self.method = ctx, cls, method
        self.flow = FunctionFlow(ctx, method, chained=True)  # `y = x = norm(x)` binds both names
        # id(node) -> (node, answer) of `is_norm`: several searches of the method ask about each call
        self._norms = PerNode()

    def find(self) -> Sublayers:
        self._refuse_flag_only()
        found = Sublayers()
        adds = _adds(self.method)
        self._refuse_long_sums(adds)
        pairs = [(add, self.flow.statement_of(add)) for add in adds] + _augmented_adds(self.method)
        pairs.sort(key=lambda pair: self.ctx.line(pair[1]))  # sublayers in source order: the last one's norm shapes the final norm
        for add, statement in pairs:
            if not isinstance(statement, cst.SimpleStatementLine):
                continue
            post = self._classify(add, statement, found)
            if post is not None:
                found.post.append(post)
        if found.post and found.plain:
            raise Unprovable(found.plain[0], "this residual has no norm while others in the block "
                             "are post-norm: the block's layout is not one this rule knows")
        if found.post or found.pre:
            self._refuse_conditional_norms(found)
        self._check_norms_accounted(found)
        if found.post:
            self._check_every_norm_placed(found)
        return found

    def _refuse_long_sums(self, adds: list[cst.BinaryOperation]) -> None:
        """Each add reads its whole branch back: a sum of n terms costs n^2 (a 2,000-term sum took
        minutes). No residual block is written like that; refuse rather than hang."""
        per_statement: dict[int, int] = {}
        for add in adds:
            statement = self.flow.statement_of(add)
            per_statement[id(statement)] = per_statement.get(id(statement), 0) + 1
            if per_statement[id(statement)] > MAX_ADDS_PER_STATEMENT:
                raise Unprovable(self.ctx.line(statement), (
                    f"a statement with more than {MAX_ADDS_PER_STATEMENT} additions is too long "
                    "for this analysis; its residuals cannot be read"))

    def origin(self, name: str, at: cst.BaseStatement) -> Hashable:
        """What value a name holds at a statement, looking through plain aliases (`r = x`)."""
        definition = self.flow.definition(name, at)
        if definition is None:
            return ("param", name)
        if isinstance(definition, Binding) and isinstance(definition.value, cst.Name):
            return self.origin(definition.value.value, definition.statement)
        if isinstance(definition, Binding) and chained_binding(name, definition.statement) is not None:
            return ("bound", id(definition.statement), None)  # every target holds the one value
        return ("bound", id(definition.statement), name)

    def is_norm(self, node: cst.CSTNode) -> bool:
        return self._norms.answer(node, self._is_norm)

    def _is_norm(self, node: cst.CSTNode) -> bool:
        return self.cls.submodule_of(node, *NORMS) is not None or self._own_norm(node) is not None \
            or norm_class(self.ctx, self.cls, node) is not None or listed_norm(self.ctx, self.cls, node) is not None \
            or project_norm(self.ctx, self.cls, node) is not None

    def _own_norm(self, node: cst.CSTNode) -> str | None:
        """A norm class written in the file (`class LayerNorm(nn.Module)`, Annotated style)."""
        sub = self.cls.submodule_of(node)
        func = sub.call.func if sub is not None else None
        if isinstance(func, cst.Name) and func.value.lower().endswith(("layernorm", "rmsnorm")) \
                and any(c.node.name.value == func.value for c in self.ctx.module_classes):
            return func.value
        return None

    def _classify(self, add, statement, found: Sublayers) -> PostNorm | None:
        try:
            split = self._split(add, statement)
        except Unprovable:
            if self._norm_of(add, statement, strict=False)[0] is None:
                return None  # not a post-norm candidate: what it is does not matter here
            raise
        if split is None:
            return None
        residual, branch = split
        if any(self._normed(name) for name in branch.inputs):
            if self._norm_of(add, statement, strict=False)[0] is not None:
                raise Unprovable(self.ctx.line(statement), "the sublayer is normalised both before "
                                 "and after (sandwich norm)")
            found.pre.append(self.ctx.line(statement))
            found.pre_norms.extend(self.ctx.parents[self.ctx.parents[n]]
                                   for n in branch.inputs if self._normed(n))
            return None
        norm_call, norm_statement, inline = self._norm_of(add, statement)
        if norm_call is None:
            chained = self._chained_norm(statement)
            if chained is not None:
                raise Unprovable(self.ctx.line(chained), (
                    f"the residual sum is normalised in a chained assignment "
                    f"`{self.ctx.code(chained).strip()}` (line {self.ctx.line(chained)}): tf-migrate "
                    "rewrites a norm bound to one name"))
            self._refuse_reused_sum(add, statement)
            found.plain.append(self.ctx.line(statement))
            return None
        if self._own_norm(norm_call.func) and norm_class(self.ctx, self.cls, norm_call.func) is None:
            raise Unprovable(self.ctx.line(norm_statement), (
                f"the norm is the file's own class `{self._own_norm(norm_call.func)}`, and it is not "
                "one whose parameters all start at ones/zeros: an identity final norm cannot be made from it"))
        self._check_branch(branch, statement, norm_statement)
        chain = self._aliases(residual, statement) + [b.statement for b, _ in branch.through]
        chain.append(statement)
        if norm_statement is not statement:
            chain.append(norm_statement)
        return PostNorm(self._norm_name(norm_call), norm_call, norm_statement, add, inline,
                        branch.inputs, _unique(chain))

    def _refuse_reused_sum(self, add, statement) -> None:
        """`out += x; x = self.n1(out); ... return x, out`: the sum goes into a norm and elsewhere."""
        binding = _bound_to(statement, add)
        uses = self.flow.uses(binding) if binding is not None else []
        normed = [use for use in uses if self._normed(use) and isinstance(
            self.ctx.parents.get(self.ctx.parents[self.ctx.parents[use]]), cst.Assign)]  # `x = norm(sum)`
        if normed and len(uses) > 1:
            other = next(use for use in uses if use not in normed)
            raise Unprovable(self.ctx.line(other), (
                f"the residual sum `{binding.name}` goes into a norm (line {self.ctx.line(normed[0])}) and "
                f"is also read on line {self.ctx.line(other)}: moving the norm would change that read"))

    def _chained_norm(self, statement) -> cst.SimpleStatementLine | None:
        """`y = x = norm(x)` right where the sum bound by `statement` is next read."""
        small = statement.body[0] if len(statement.body) == 1 else None
        if not (isinstance(small, cst.Assign) and len(small.targets) == 1
                and isinstance(small.targets[0].target, cst.Name)):
            return None
        name = small.targets[0].target.value
        line = self.ctx.line(statement)
        for later in find_types(self.method.body, cst.SimpleStatementLine):
            if self.ctx.line(later) <= line or not later.body or not isinstance(later.body[0], cst.Assign):
                continue
            assign = later.body[0]
            if name in {n.value for n in loads(assign.value, name)}:
                if len(assign.targets) > 1 and self.is_norm(assign.value.func if isinstance(
                        assign.value, cst.Call) else assign.value):
                    return later
                return None
        return None

    def _aliases(self, name: cst.Name, statement) -> list[cst.SimpleStatementLine]:
        """The `residual = x` statements the residual name is read through."""
        definition = self.flow.definition(name.value, statement)
        if isinstance(definition, Binding) and isinstance(definition.value, cst.Name):
            return [definition.statement] + self._aliases(definition.value, definition.statement)
        return []

    def _split(self, add, statement) -> tuple[cst.Name, _Branch] | None:
        """Which operand is the residual and which the branch; None when this is no residual."""
        for residual, branch in ((add.left, add.right), (add.right, add.left)):
            core, scaled = _unscaled(residual)
            if not isinstance(core, cst.Name):
                continue
            origin = self.origin(core.value, statement)
            branch_core, branch_scaled = _unscaled(branch)
            where = "" if branch_scaled or not self._scaled_in_binding(branch_core, statement) \
                else f"; `{self.ctx.code(branch_core)}` is scaled where it is bound"
            branch_scaled = branch_scaled or bool(where)
            found = _Branch()
            self._expand(branch_core, statement, origin, found, values_only=True)
            if found.inputs:  # it reads the stream's values (not only its shape): every read counts
                found = _Branch()
                self._expand(branch_core, statement, origin, found)
                if scaled or branch_scaled:
                    raise Unprovable(self.ctx.line(statement),
                                     "the residual or its branch is scaled "
                                     f"(`{self.ctx.code(add)}`{where}): not a plain residual sublayer")
                return core, found
        self._refuse_split_residual(add, statement)
        return None

    def _scaled_in_binding(self, expr, statement) -> bool:
        """`a = f(x) * alpha; x = norm(x + a)`: the branch is scaled in the statement binding it."""
        if not isinstance(expr, cst.Name):
            return False
        definition = self.flow.definition(expr.value, statement)
        if not isinstance(definition, Binding):
            return False
        core, scaled = _unscaled(definition.value)
        return scaled or self._scaled_in_binding(core, definition.statement)

    def _expand(self, expr, statement, origin, found: _Branch, values_only: bool = False) -> None:
        for name in loads(expr, None):
            if values_only and _metadata_read(self.ctx, name):
                continue  # `pos.expand_as(x)`, `x.size(1)`: the shape, not the values
            if self.origin(name.value, statement) == origin:
                found.inputs.append(name)
                continue
            for binding in self._bindings(name, statement, origin):
                inner = _Branch()
                self._expand(binding.value, binding.statement, origin, inner, values_only)
                if inner.inputs:
                    found.inputs.extend(inner.inputs)
                    found.through.extend(inner.through + [(binding, name)])

    def _bindings(self, name: cst.Name, statement, origin) -> list[Binding]:
        """The bindings a read may come from; refuses when one the analysis cannot follow
        depends on the sublayer input."""
        definition = self.flow.definition(name.value, statement)
        if isinstance(definition, GuardedBinding):
            previous = [] if definition.previous is None else self._bindings_of(definition.previous)
            return [definition.binding] + previous
        bindings = self._bindings_of(definition) if definition is not None else []
        if isinstance(definition, OpaqueBinding) and not bindings and any(
                self.origin(n.value, definition.statement) == origin
                for n in loads(definition.statement, None) if self.flow.contains(definition.statement)):
            raise Unprovable(self.ctx.line(definition.statement), f"`{name.value}` is bound by a "
                             "statement this analysis cannot follow, and it reads the sublayer input")
        return [b for b in bindings if not isinstance(b.value, cst.Name)]

    def _bindings_of(self, definition) -> list[Binding]:
        if isinstance(definition, Binding):
            return [definition]
        if isinstance(definition, OpaqueBinding):
            unpacked = _unpacked(definition.statement, definition.name)
            return [unpacked] if unpacked else []
        return []

    def _normed(self, name: cst.Name) -> bool:
        parent = self.ctx.parents.get(name)
        call = self.ctx.parents.get(parent) if isinstance(parent, cst.Arg) else None
        return isinstance(call, cst.Call) and self.is_norm(call.func)

    def _norm_of(self, add, statement, strict: bool = True):
        """The norm applied to the add: directly, or to the one name the add is bound to."""
        arg = self.ctx.parents.get(add)
        call = self.ctx.parents.get(arg) if isinstance(arg, cst.Arg) else None
        if isinstance(call, cst.Call) and self.is_norm(call.func):
            if strict:
                self._check_whole_value(call, statement)
            return call, statement, True
        binding = _bound_to(statement, add)
        if binding is None:
            return None, None, False
        uses = self.flow.uses(binding)
        if len(uses) != 1:
            return None, None, False
        arg = self.ctx.parents.get(uses[0])
        call = self.ctx.parents.get(arg) if isinstance(arg, cst.Arg) else None
        if not (isinstance(call, cst.Call) and self.is_norm(call.func)):
            return None, None, False
        norm_statement = self.flow.statement_of(call)
        if strict:
            self._check_whole_value(call, norm_statement)
        return call, norm_statement, False

    def _check_whole_value(self, call: cst.Call, statement) -> None:
        small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) else None
        ok = len(statement.body) == 1 and (
            (isinstance(small, cst.Assign) and all(isinstance(t.target, cst.Name) for t in small.targets)
             and small.value is call)
            or (isinstance(small, cst.Return) and (small.value is call or _first_of_tuple(small.value, call))))
        if not ok or len(call.args) != 1 or call.args[0].keyword or call.args[0].star:
            raise Unprovable(self.ctx.line(statement),
                             f"the norm `{self.ctx.code(call)}` is not the whole value of an "
                             "assignment to a name or of a return")

    def _check_branch(self, branch: _Branch, statement, norm_statement) -> None:
        block = self.ctx.parents.get(norm_statement)
        through = {id(name) for _, name in branch.through}
        for binding, name in branch.through:
            if not self._within(binding.statement, block):
                raise Unprovable(self.ctx.line(binding.statement),
                                 "the sublayer is computed in another block than its residual add")
            for use in self.flow.uses(binding):
                where = self.flow.statement_of(use)
                if _metadata_read(self.ctx, use):
                    continue  # its dtype or shape: the same after the rewrite
                extras = id(use) not in through and _other_items(self.ctx, use, [
                    n for b, n in branch.through if b is binding])
                if extras and (_is_return(where) or self._only_returned(where)) and self._after(use, norm_statement):
                    continue  # returned beside the stream (`attn_outputs[1:]`): the new sublayer's extras
                if extras and self._collected(where):
                    continue  # `maps = maps + (attn_outputs[1],)`: kept for the caller, not the stream
                if id(use) not in through and not self._rebound_first(binding, use):
                    raise Unprovable(self.ctx.line(use), f"the sublayer's intermediate "
                                     f"`{binding.name}` is also read outside the sublayer")
        if self.ctx.parents.get(statement) is not block:
            raise Unprovable(self.ctx.line(statement), "the residual add and its norm are in "
                             "different blocks")

    def _after(self, node, statement) -> bool:
        return self.ctx.line(node) > self.ctx.lines(statement).stop - 1 and self._loop_of(statement) is None

    def _collected(self, statement) -> bool:
        """`acc = acc + (item,)` or `acc.append(item)` (alone, or alone under an `if`), where `acc` is
        read nowhere in the method but in such statements, returns and tuples/lists being built for
        a return: the item is collected for the caller and never flows back into the stream."""
        acc = _accumulator(statement)
        if acc is None:
            return False
        for read in find(self.method.body, lambda n: isinstance(n, cst.Name) and n.value == acc):
            parent = self.ctx.parents.get(read)
            if isinstance(parent, cst.AssignTarget) or isinstance(parent, cst.Attribute) and parent.attr is read:
                continue
            where = self.flow.statement_of(read)
            if _accumulator(where) == acc or _is_return(where) or self._only_returned(where) \
                    or self._feeds_returned(where):
                continue
            return False
        return True

    def _feeds_returned(self, statement) -> bool:
        """`outputs = outputs + (maps,)` (alone or under an `if`) where `outputs` is only returned
        or grown the same way."""
        acc = _accumulator(statement)
        return acc is not None and all(
            _accumulator(self.flow.statement_of(r)) == acc or _is_return(self.flow.statement_of(r))
            for r in find(self.method.body, lambda n: isinstance(n, cst.Name) and n.value == acc)
            if not isinstance(self.ctx.parents.get(r), cst.AssignTarget))

    def _only_returned(self, statement) -> bool:
        """`outputs = [h] + rest` (or a tuple) whose name is only ever returned as it is."""
        small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 else None
        if not (isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name)
                and _sequence_sum(small.value)):
            return False
        uses = self.flow.uses(Binding(small.targets[0].target.value, small.value, statement))
        return bool(uses) and all(isinstance(ret := self.flow.statement_of(u), cst.SimpleStatementLine)
                                  and isinstance(ret.body[0], cst.Return) and ret.body[0].value is u for u in uses)

    def _within(self, statement, block) -> bool:
        node = statement
        while node is not None and node is not self.method:
            if self.ctx.parents.get(node) is block:
                return isinstance(node, cst.SimpleStatementLine) or (
                    isinstance(node, cst.If) and node.orelse is None)
            node = self.ctx.parents.get(node)
        return False

    def _refuse_split_residual(self, add, statement) -> None:
        """`norm(h + input_tensor)` where both come from the caller: the sublayer is elsewhere."""
        arg = self.ctx.parents.get(add)
        call = self.ctx.parents.get(arg) if isinstance(arg, cst.Arg) else None
        if not (isinstance(call, cst.Call) and self.is_norm(call.func)):
            return
        params = {p.name.value for p in self.method.params.params} - {"self"}
        for operand in (add.left, add.right):
            if isinstance(operand, cst.Name) and operand.value in params \
                    and self.flow.definition(operand.value, statement) is None:
                other = add.right if operand is add.left else add.left
                opaque = self.flow.definition(other.value, statement) if isinstance(other, cst.Name) else None
                if isinstance(opaque, OpaqueBinding) and self.flow.contains(opaque.statement):
                    raise Unprovable(self.ctx.line(opaque.statement), (
                        f"`{other.value}` is bound by a statement this analysis cannot follow (line "
                        f"{self.ctx.line(opaque.statement)}), so whether the sublayer reads `{operand.value}` "
                        "cannot be read"))
                raise Unprovable(self.ctx.line(statement), (
                    f"post-norm `{self.ctx.code(call)}` adds `{operand.value}`, which the caller "
                    "passes in: the sublayer this residual wraps is computed in another module, "
                    "so the norm cannot be moved in front of it from here"))

    def _check_norms_accounted(self, found: Sublayers) -> None:
        """A post-norm's output must only feed the next sublayer or be returned."""
        statements = {id(s) for post in found.post for s in post.statements}
        first_line = min((self.ctx.line(s) for post in found.post for s in post.statements), default=0)
        for post in found.post:
            small = post.statement.body[0]
            if not isinstance(small, cst.Assign):
                continue
            loop = self._loop_of(post.statement) if isinstance(post.call.func, cst.Subscript) else None
            reads = [use for target in small.targets  # `y = x = norm(...)`: both names hold the output
                     for use in self._through_dropout(Binding(target.target.value, small.value, post.statement))]
            for use in reads:
                where = self.flow.statement_of(use)
                if id(where) in statements or (_is_return(where) and len(small.targets) == 1):
                    continue  # a chained norm's second name may only feed the next sublayer
                if len(small.targets) == 1 and _first_item(self.ctx, use, where) and self._only_returned(where):
                    continue  # `outputs = [h] + extras; return outputs`: the stream is returned first
                if loop is not None and not self._within_node(use, loop):
                    continue  # after the loop over the layers: the stream the final norm will close
                if loop is not None and self._collected(where) and self.ctx.line(use) < first_line:
                    continue  # each layer's input kept for the caller at the top of the loop
                raise Unprovable(self.ctx.line(use), f"the output of `{self.ctx.code(post.call)}` "
                                 "is also read outside the residual stream")

    def _through_dropout(self, binding: Binding) -> list[cst.Name]:
        """The reads of a norm's output, looking through `x = self.drop(x)` right after it (and a
        padding mask `x *= mask`): a dropout that rebinds the stream to itself is the stream, not a
        reader of it."""
        found, masked = [], set()
        for use in self.flow.uses(binding):
            where = self.flow.statement_of(use)
            small = where.body[0] if isinstance(where, cst.SimpleStatementLine) and len(where.body) == 1 else None
            if isinstance(small, cst.Assign) and len(small.targets) == 1 \
                    and isinstance(small.targets[0].target, cst.Name) \
                    and small.targets[0].target.value == binding.name and isinstance(small.value, cst.Call) \
                    and self.cls.submodule_of(small.value.func, "torch.nn.Dropout") is not None \
                    and len(small.value.args) == 1 and small.value.args[0].value is use:
                found += self._through_dropout(Binding(binding.name, small.value, where))
            elif self._masks_stream(small, binding.name):
                if id(where) not in masked:  # the target and a `.dtype` read: one statement
                    masked.add(id(where))
                    found += self._through_dropout(Binding(binding.name, small.value, where))
            else:
                found.append(use)
        return found

    def _masks_stream(self, small, name: str) -> bool:
        """`x *= mask.unsqueeze(-1).to(x.dtype)`: the stream scaled elementwise by a value that
        reads it only for its dtype/shape stays the stream (padding positions zeroed)."""
        return isinstance(small, cst.AugAssign) and isinstance(small.operator, cst.MultiplyAssign) \
            and isinstance(small.target, cst.Name) and small.target.value == name \
            and all(_metadata_read(self.ctx, n) for n in loads(small.value, name))

    def _rebound_first(self, binding: Binding, use: cst.Name) -> bool:
        """In a loop body, a read before the binding is reached by it only through the next
        iteration; a plain assignment to the name at the top of the body, before the read, stops
        that (`y = attn(x); ...; y = ffn(x); y = drop(y)` in a layer loop)."""
        loop = self._loop_of(binding.statement)
        if loop is None or not isinstance(loop.body, cst.IndentedBlock) or not self._within_node(use, loop):
            return False
        use_line = self.ctx.line(use)
        if use_line >= self.ctx.line(binding.statement):
            return False
        for statement in loop.body.body:
            if self.ctx.line(statement) >= use_line:
                return False
            small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 else None
            if isinstance(small, cst.Assign) and any(
                    isinstance(t.target, cst.Name) and t.target.value == binding.name for t in small.targets):
                return True
        return False

    def _loop_of(self, statement) -> cst.For | None:
        node = self.ctx.parents.get(statement)
        while node is not None and node is not self.method:
            if isinstance(node, cst.For):
                return node
            node = self.ctx.parents.get(node)
        return None

    def _within_node(self, node, container) -> bool:
        while node is not None:
            if node is container:
                return True
            node = self.ctx.parents.get(node)
        return False

    def _refuse_conditional_norms(self, found: Sublayers) -> None:
        """`if self.normalize_before: x = self.norm(x)` (fairseq, ESPnet): pre- or post-norm is
        decided at run time, so neither reading of the block is the model (`FlagChosen` when one
        such flag decides every conditional norm). A pre-norm sublayer that is itself optional
        (`if memory is not None:` around norm, cross-attention and residual add) is no such case."""
        pre_norms = {id(call) for call in found.pre_norms}
        flags: set[str] = set()
        first: cst.Call | None = None
        for call in [node for node in find_types(self.method, cst.Call) if self.is_norm(node.func)]:
            condition = self._condition(call)
            if condition is None or (
                    id(call) in pre_norms and isinstance(condition, cst.If)
                    and any(line in self.ctx.lines(condition) for line in found.pre)) \
                    or self._optional_post(call, condition, found):
                continue
            first = first or call
            flag = _position_flag(condition.test)
            if flag is None:
                raise Unprovable(self.ctx.line(call), (
                    f"the norm `{self.ctx.code(call)}` is applied under a condition "
                    f"(`{self.ctx.code(condition.test)}`) that does not hold its whole sublayer alone: "
                    "which norms run is decided at run time (an `else`, or a "
                    "`normalize_before`-style flag)"))
            flags.add(flag)
        if len(flags) == 1:
            raise FlagChosen(self.ctx.line(first), f"the norm position follows `self.{flags.pop()}`")
        if flags:
            raise Unprovable(self.ctx.line(first), "the norms follow several flags: "
                             + ", ".join(f"`self.{f}`" for f in sorted(flags)))

    def _refuse_flag_only(self) -> None:
        """Every norm of the method applied under `if self.pre_lnorm:` or its `else` (one flag named
        for the norm position): the block offers both orders, however its residuals are spelled
        (`FlagChosen` before they are read; a norm its base class builds counts)."""
        calls = [node for node in find_types(self.method, cst.Call)
                 if self.is_norm(node.func) or inherited_norm(self.ctx, self.cls, node.func)]
        flags = set()
        for call in calls:
            condition = self._condition(call)
            flag = _position_flag(condition.test) if isinstance(condition, cst.If) else None
            if flag is None:
                return
            flags.add(flag)
        if len(flags) == 1 and any(self._condition(call).orelse is not None for call in calls):
            raise FlagChosen(self.ctx.line(calls[0]), f"the norm position follows `self.{flags.pop()}`")

    def _optional_post(self, call: cst.Call, condition, found: Sublayers) -> bool:
        """`if enc is not None:` around a whole post-norm sublayer (residual alias, sublayer, add
        and norm, no else): skipped or not, the rewritten sublayer stays inside the same `if`."""
        post = next((p for p in found.post if p.call is call), None)
        if post is None or not isinstance(condition, cst.If) or condition.orelse is not None \
                or _position_flag(condition.test) is not None:
            return False
        inside = self.ctx.lines(condition.body)
        return all(self.ctx.line(statement) in inside for statement in post.statements)

    def _condition(self, call: cst.Call) -> cst.If | cst.IfExp | None:
        """The nearest `if` the norm is applied under; a choice between two norms of one input
        (`norm(x, t) if adaptive else norm(x)`) is no condition on whether a norm applies."""
        node = self.ctx.parents.get(call)
        while node is not None and node is not self.method:
            if isinstance(node, cst.IfExp) and self._both_norms(node):
                node = self.ctx.parents.get(node)
                continue
            if isinstance(node, (cst.If, cst.IfExp)):
                return node
            node = self.ctx.parents.get(node)
        return None

    def _both_norms(self, choice: cst.IfExp) -> bool:
        sides = (choice.body, choice.orelse)
        return all(isinstance(s, cst.Call) and self.is_norm(s.func) and s.args for s in sides) and \
            self.ctx.code(sides[0].args[0].value) == self.ctx.code(sides[1].args[0].value)

    def _check_every_norm_placed(self, found: Sublayers) -> None:
        """Every sublayer of a block is rewritten or none is: a norm applied to anything this
        analysis did not read as a residual sublayer (a residual scaled in a temporary, a sum
        built with `+=`, parallel branches) would stay post-norm beside rewritten ones."""
        known = {id(post.call) for post in found.post} | {id(call) for call in found.pre_norms}
        loops = {id(self._loop_of(post.statement)) for post in found.post}
        loop = self._loop_of(found.post[0].statement) if len(loops) == 1 else None
        for call in [node for node in find_types(self.method, cst.Call) if self.is_norm(node.func)]:
            if loop is not None and self.ctx.line(call) < self.ctx.line(loop) \
                    and self.flow.statement_of(call) in loop_siblings(self.ctx, loop):
                continue  # the embeddings' norm before a model's own loop over its layers: kept as is
            if id(call) not in known:
                raise Unprovable(self.ctx.line(call), (
                    f"the norm `{self.ctx.code(call)}` is not part of a residual sublayer this "
                    "rule can read, while others in the block are post-norm: a block is migrated "
                    "whole or not at all"))

    def _norm_name(self, call: cst.Call) -> str:
        if isinstance(call.func, cst.Subscript):  # `self.norms[i]`: the list
            return call.func.value.attr.value
        return call.func.attr.value


def _adds(method: cst.FunctionDef) -> list[cst.BinaryOperation]:
    """The `+` operations of the method's own body (an iterative walk: a 400-term sum is fine)."""
    return [node for node in find_types(method.body, cst.BinaryOperation, into_scopes=False)
            if isinstance(node.operator, cst.Add)]


def _augmented_adds(method: cst.FunctionDef) -> list[tuple[cst.BinaryOperation, cst.SimpleStatementLine]]:
    """`t += r` alone on its line (r a name), read as the add `t + r` (the target node standing for
    the old value, as the dataflow reads it): `q += residual; q = self.layer_norm(q)` is post-norm."""
    found = []
    for statement in find_types(method.body, cst.SimpleStatementLine, into_scopes=False):
        small = statement.body[0] if len(statement.body) == 1 else None
        if isinstance(small, cst.AugAssign) and isinstance(small.operator, cst.AddAssign) \
                and isinstance(small.target, cst.Name) and isinstance(small.value, cst.Name):
            found.append((cst.BinaryOperation(small.target, cst.Add(), small.value), statement))
    return found


def _unscaled(expr: cst.BaseExpression) -> tuple[cst.BaseExpression, bool]:
    """`a * s`, `s * a`, `a / s` -> (a, True); anything else -> (expr, False)."""
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Multiply, cst.Divide)):
        for side in (expr.left, expr.right):
            if isinstance(side, (cst.Name, cst.Call)):
                return side, True
    return expr, False


def _bound_to(statement: cst.SimpleStatementLine, add: cst.BinaryOperation) -> Binding | None:
    small = statement.body[0] if len(statement.body) == 1 else None
    if isinstance(small, cst.Assign) and small.value is add and len(small.targets) == 1 \
            and isinstance(small.targets[0].target, cst.Name):
        return Binding(small.targets[0].target.value, add, statement)
    if isinstance(small, cst.AugAssign) and isinstance(small.operator, cst.AddAssign) \
            and isinstance(small.target, cst.Name):
        return Binding(small.target.value, add, statement)
    return None


def _unpacked(statement, name: str) -> Binding | None:
    """`k, v = expr` read as a binding of `k` (and of `v`) to `expr`."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    if isinstance(small, cst.Assign) and len(small.targets) == 1 \
            and isinstance(small.targets[0].target, cst.Tuple) and all(
                isinstance(e.value, cst.Name) for e in small.targets[0].target.elements) \
            and name in {e.value.value for e in small.targets[0].target.elements}:
        return Binding(name, small.value, statement)
    return None


def _first_of_tuple(value, call: cst.Call) -> bool:
    """`return self.norm(x + y), attn`: the stream is the first item of the returned tuple."""
    return isinstance(value, cst.Tuple) and bool(value.elements) and value.elements[0].value is call \
        and not isinstance(value.elements[0], cst.StarredElement)


def loop_siblings(ctx, loop: cst.For) -> list:
    """The statements of the block the loop itself sits in."""
    block = ctx.parents.get(loop)
    return list(block.body) if isinstance(block, cst.IndentedBlock) else []


def _other_items(ctx, use: cst.Name, path: list[cst.Name]) -> bool:
    """The sublayer reads item 0 of a result (`out[0]`) and `use` reads only other items
    (`out[1]`, `out[1:]`): the extras a sublayer returns beside its output, such as attention maps."""
    def index(name):
        parent = ctx.parents.get(name)
        if not (isinstance(parent, cst.Subscript) and parent.value is name and len(parent.slice) == 1):
            return None
        return parent.slice[0].slice

    def literal(node, value=None):
        return isinstance(node, cst.Integer) and (value is None or node.value == value)

    taken = [index(n) for n in path]
    if not taken or not all(isinstance(t, cst.Index) and literal(t.value, "0") for t in taken):
        return False
    other = index(use)
    if isinstance(other, cst.Index):
        return literal(other.value) and other.value.value != "0"
    return isinstance(other, cst.Slice) and literal(other.lower) and other.lower.value != "0" and other.upper is None


def _accumulator(statement) -> str | None:
    """`acc = acc + (...)`, `acc += (...)` or `acc.append(...)` alone on its line: `acc`."""
    small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 else None
    if isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name) \
            and isinstance(small.value, cst.BinaryOperation) and isinstance(small.value.operator, cst.Add) \
            and isinstance(small.value.left, cst.Name) and small.value.left.value == small.targets[0].target.value \
            and isinstance(small.value.right, (cst.Tuple, cst.List)):
        return small.targets[0].target.value
    if isinstance(small, cst.AugAssign) and isinstance(small.operator, cst.AddAssign) \
            and isinstance(small.target, cst.Name) and isinstance(small.value, (cst.Tuple, cst.List)):
        return small.target.value
    if isinstance(small, cst.Expr) and isinstance(small.value, cst.Call) and isinstance(small.value.func, cst.Attribute) \
            and small.value.func.attr.value == "append" and isinstance(small.value.func.value, cst.Name):
        return small.value.func.value.value
    return None


def _sequence_sum(value) -> bool:
    """`[a, b]`, `(a,)`, `[a] + rest`: a list or tuple display, or one concatenated with more."""
    if isinstance(value, (cst.List, cst.Tuple)):
        return True
    return isinstance(value, cst.BinaryOperation) and isinstance(value.operator, cst.Add) \
        and isinstance(value.left, (cst.List, cst.Tuple))


def _first_item(ctx, use: cst.Name, statement) -> bool:
    """`use` is the first item of the list/tuple display that starts the statement's value."""
    small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 else None
    value = small.value if isinstance(small, cst.Assign) else None
    display = value.left if isinstance(value, cst.BinaryOperation) else value
    return isinstance(display, (cst.List, cst.Tuple)) and bool(display.elements) \
        and display.elements[0].value is use and not isinstance(display.elements[0], cst.StarredElement)


_SHAPE_OF_ARGUMENT = ("expand_as", "view_as", "reshape_as", "type_as")
_METADATA = ("shape", "dtype", "device", "size", "dim", "ndim", "ndimension")


def _metadata_read(ctx, name: cst.Name) -> bool:
    """`name` is read only for its shape, dtype or device: `x.shape`, `x.size(1)`, `x.dtype`, or
    the argument of `y.expand_as(x)` / `view_as` / `reshape_as` / `type_as`."""
    parent = ctx.parents.get(name)
    if isinstance(parent, cst.Attribute) and parent.value is name and parent.attr.value in _METADATA:
        return True
    call = ctx.parents.get(parent) if isinstance(parent, cst.Arg) else None
    return isinstance(call, cst.Call) and len(call.args) == 1 and isinstance(call.func, cst.Attribute) \
        and call.func.attr.value in _SHAPE_OF_ARGUMENT


def _is_return(statement) -> bool:
    return isinstance(statement, cst.SimpleStatementLine) and any(
        isinstance(s, cst.Return) for s in statement.body)


def _unique(statements: list) -> list:
    seen: dict[int, cst.CSTNode] = {}
    for statement in statements:
        seen.setdefault(id(statement), statement)
    return list(seen.values())
