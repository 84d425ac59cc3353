"""TFM101's census: every attention chain of the file (analysis/legacy_attention.py), as a
component, with the step the matcher is known not to follow when the census can tell."""

from __future__ import annotations

from typing import Iterator

import ast

from tf_migrate.analysis.census import dotted, is_namespace, last_name, line_span, product_operands, walker
from tf_migrate.analysis.legacy_attention import AttentionSite, attention_sites, module_product
from tf_migrate.engine.rule import Component


def components(ctx, code: str) -> Iterator[Component]:
    for _, component in sited(ctx, code):
        yield component


def sited(ctx, code: str) -> Iterator[tuple[AttentionSite, Component]]:
    """Each attention site of the file with its component."""
    index = walker(ctx).index
    for site in attention_sites(ctx):
        start, end = line_span(*site.nodes)
        functions = {index.function_of(n) for n in site.nodes}
        scopes = tuple(sorted(f.lines for f in functions))
        cls = site.function.cls
        if cls is not None:
            scopes += ((cls.node.lineno, cls.node.end_lineno or cls.node.lineno),)
        yield site, Component(code, "attention", cls.qualname if cls else site.function.qualname, start, end,
                        "softmax of a product of two tensors, multiplied with a third "
                        f"(scores line {site.scores.lineno}, softmax line {site.softmax.lineno}, "
                        f"product with v line {site.output.lineno})",
                        scopes=scopes, step=_step(site, len(functions), index.modules))


def _step(site: AttentionSite, functions: int, modules: frozenset[str]) -> str:
    """What the matcher is known not to follow here, or '' when the census cannot tell."""
    if site.function.cls is None:
        return (f"it is computed in `{site.function.qualname}`, outside any nn.Module class: the "
                "matcher reads methods of nn.Module classes only")
    if functions > 1:
        return "the chain spans several functions; the matcher follows one method"
    for node, role in ((site.scores, "scores product"), (site.output, "product with v")):
        if module_product(node, site.function) is not None and product_operands(node) is None:
            return (f"the {role} is the submodule `{dotted(node.func)}` (line {node.lineno}), a product layer "
                    "whose forward the matcher does not read")
        name = last_name(node) if not hasattr(node, "op") else "@"
        if name in ("baddbmm", "mm"):
            return f"the {role} is `{name}`, which the matcher does not read (einsum, @, matmul, bmm)"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and not is_namespace(node.func.value, modules):
            return (f"the {role} is the method `.{name}()` (line {node.lineno}); the matcher "
                    f"reads `torch.{name}(a, b)` and `@`")
    name = last_name(site.softmax)
    if name not in ("softmax", "Softmax"):
        return f"the softmax is the helper `{name}`, whose body the matcher does not read"
    callee = dotted(site.softmax.func)
    if callee and callee.split(".")[0] in modules and callee.split(".")[0] not in ("torch", "F", "nn", "functional"):
        return f"the softmax is `{callee}` (line {site.softmax.lineno}), a function the matcher does not read"
    return ""
