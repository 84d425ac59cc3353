"""TFM102's census: the projections that produce an attention's q, k and v.

For every attention of the file (analysis/legacy_attention.py), each of q, k, v is followed back
to the projection that made it (a submodule call, `F.linear`, a product with a weight, an item of
a ModuleList). Three different projections, or one list of them, are a component; a fused
projection split three ways gives one name and is not.
"""

from __future__ import annotations

import ast
from typing import Iterator

from tf_migrate.analysis.census import projection_name, product_operands, is_softmax, walker
from tf_migrate.analysis.legacy_attention import attention_inputs
from tf_migrate.engine.rule import Component


def components(ctx, code: str) -> Iterator[Component]:
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
        yield Component(code, "qkv", cls.qualname, min(lines), max(lines), what, anchors, scopes, step)
