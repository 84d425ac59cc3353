"""TFM102's census: the projections that produce an attention's q, k and v.

For every attention of the file (analysis/legacy_attention.py), each of q, k, v is followed back
to the projection that made it (a submodule call, `F.linear`, a product with a weight, an item of
a ModuleList). Three different projections, or one list of them, are a component; a fused
projection split three ways gives one name and is not.

The attention is often computed elsewhere (`self.attention(q, k, v)` of a class in another
file), where no attention site of this class reaches the projections: a class that builds three
q/k/v-named projection layers, or a list of Linears that forward zips or indexes as q/k/v, is then
a component by itself (`declared`).
"""

from __future__ import annotations

import ast
from typing import Iterator

from tf_migrate.analysis.census import ClassInfo, projection_name, product_operands, is_softmax, walker
from tf_migrate.analysis.legacy_attention import attention_inputs
from tf_migrate.analysis.linear import linear_construction
from tf_migrate.engine.rule import Component
from tf_migrate.rules.fused_qkv.listed import listed_candidates
from tf_migrate.rules.fused_qkv.projections import ROLES, triples

# What builds a projection layer or weight, by the last part of its callable's name.
_PROJECTION_BUILDERS = ("Linear", "Conv1D", "Parameter")


def components(ctx, code: str) -> Iterator[Component]:
    for _, _, component in reached(ctx, code):
        yield component
    yield from declared(ctx, code, reached_keys(ctx, code))


def reached_keys(ctx, code: str) -> set[tuple[str, frozenset[str]]]:
    return {(cls.qualname, frozenset(n.removesuffix("[*]") for n in names)) for cls, names, _ in reached(ctx, code)}


def reached(ctx, code: str) -> list[tuple[ClassInfo, list[str], Component]]:
    """(class, projection names, component) of the q/k/v projections an attention site reaches."""
    return ctx.memo(f"fused_qkv.census.{code}", lambda: list(_reached(ctx, code)))


def _reached(ctx, code: str) -> Iterator[tuple[ClassInfo, list[str], Component]]:
    walk = walker(ctx)
    index = walk.index
    seen: set[tuple[str, ...]] = set()
    for site in attention_inputs(ctx):
        def hit(node, function):
            return function.cls is not None and projection_name(node, function, index) is not None

        def stop(node, function):
            return isinstance(node, ast.Call) and is_softmax(node, function) or (
                product_operands(node) is not None and not hit(node, function))

        found = [walk.back(operand, hit, stop, into_functions=True) for operand in (site.q, site.k, site.v)]
        if any(node is None for node in found):
            continue
        functions = {index.function_of(node) for node in found}
        cls = next(iter(functions)).cls
        if len({f.cls for f in functions}) != 1:
            continue
        names = [projection_name(node, index.function_of(node), index) for node in found]
        distinct = len(set(names)) == 3
        listed = len(set(names)) == 1 and names[0].endswith("[*]")
        key = (cls.qualname, *names)
        if not (distinct or listed) or key in seen:
            continue
        seen.add(key)
        attributes = {n.removesuffix("[*]") for n in names}
        anchors = tuple(sorted({v.lineno for a in attributes for v in cls.attributes.get(a, ())}))
        lines = [n.lineno for n in found]
        scopes = (*sorted(f.lines for f in functions), (cls.node.lineno, cls.node.end_lineno or cls.node.lineno))
        if distinct:
            what = "three projections " + ", ".join(f"`{n}`" for n in names) + " produce q, k and v"
            step = ""
        else:
            what = f"q, k and v are produced by the items of the projection list `{names[0][:-3]}`"
            step = "the matcher fuses three named projections, not the items of a list"
        yield cls, names, Component(code, "qkv", cls.qualname, min(lines), max(lines), what, anchors, scopes, step)


def declared(ctx, code: str, seen: set[tuple[str, frozenset[str]]]) -> Iterator[Component]:
    """Named q/k/v projection triples and q/k/v lists of each class that no attention site reached."""
    for cls in ctx.module_classes:
        found = []
        for triple in triples(list(cls.submodules)):
            subs = [cls.submodules[triple.attributes[r]] for r in ROLES]
            if all(_builds_projection(ctx, s) for s in subs):
                found.append(([s.name for s in subs], [s.statement for s in subs],
                              "three projections " + ", ".join(f"`{s.name}`" for s in subs)
                              + " are built for q, k and v"))
        for attribute in listed_candidates(ctx, cls):
            sub = cls.submodules[attribute]
            found.append(([attribute], [sub.statement],
                          f"q, k and v are produced by the items of the projection list `{attribute}`"))
        span = None  # asked only of a class with a candidate: positions print the whole module
        for names, statements, what in found:
            key = (cls.qualname, frozenset(names))
            if key in seen:
                continue
            seen.add(key)
            if span is None:
                extent = ctx.lines(cls.node)
                span = (extent.start, extent.stop - 1)
            lines = [ctx.line(s) for s in statements]
            uses = tuple(sorted({ctx.line(ref) for name in names for ref in cls.self_references(name)}))
            yield Component(code, "qkv", cls.qualname, min(lines), max(lines), what, uses, (span,))


def _builds_projection(ctx, sub) -> bool:
    built = sub.callee or ctx.code(sub.call.func)
    return built.rsplit(".", 1)[-1].endswith(_PROJECTION_BUILDERS) or linear_construction(ctx, sub.call) is not None
