"""Fusing raw `nn.Parameter` q/k/v weights: one stacked parameter, one product, one split.

The weights are stacked along the dimension each product maps to its output, so the fused
product is the three products side by side. `nn.init` calls on the old weights are rewritten to
initialise each slice of the stacked one as its own tensor: the same fans and bounds, the same
distribution per slice (and the same values where the init fills a strided view in order).
Any other use of an old weight, anywhere in the file, blocks the fusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from tf_migrate.analysis.nodes import atom_code
from tf_migrate.rules.fused_qkv.projections import (ROLES, Triple, applied, different_inputs, foreign_attribute,
                                                   naming_string)
from tf_migrate.rules.fused_qkv.qkv_split import Blocked, constructor_edits, forward_edits, split_suffix, total_size
from tf_migrate.rules.fused_qkv.raw_weights import Product, init_site, product, shape


@dataclass
class RawFusion:
    replacements: dict
    dim: int  # the weight dimension the three are stacked along (the checkpoint's cat dim)


def raw_fusion(ctx, cls, triple: Triple, subs) -> RawFusion:
    names = [triple.attributes[r] for r in ROLES]
    _refuse_foreign_uses(ctx, cls, names)
    uses = [_uses(ctx, cls, sub) for sub in subs]
    products = [p for p, _, _ in uses]
    apps = [applied(ctx, cls, name, p.node, p.input) for name, p in zip(names, products)]
    blocked = next((a for a in apps if isinstance(a, str)), None) or different_inputs(ctx, apps)
    if blocked:
        raise Blocked(blocked)
    _same(ctx, [(p.node, ref) for p, ref, _ in uses], "the three are not applied the same way")
    dim = products[0].weight_dim
    einsums = all(ctx.names.is_call(p.node, "torch.einsum") for p in products)
    sizes = [shape(ctx, sub, any_rank=einsums)[dim] for sub in subs]
    _same(ctx, [(sub.call, size) for sub, size in zip(subs, sizes)],
          "the weights differ in more than their output size")
    outs = [ctx.code(size) for size in sizes]
    fused = cst.parse_expression(f"self.{triple.fused_name}")
    value = atom_code(ctx, products[0].node.deep_replace(uses[0][1], fused))
    edits = forward_edits(ctx, apps, value + split_suffix(outs, products[0].output_dim))
    constructor = subs[0].call.deep_replace(sizes[0], cst.parse_expression(total_size(outs)))
    edits.update(constructor_edits(ctx, [s.statement for s in subs],
                                   f"self.{triple.fused_name} = {ctx.code(constructor)}"))
    edits.update(_init_edits(ctx, [sites for _, _, sites in uses], f"self.{triple.fused_name}"
                             + split_suffix(outs, dim)))
    return RawFusion(edits, dim)


def _uses(ctx, cls, sub) -> tuple[Product, cst.Attribute, list]:
    """The one product applying `sub`, its reference there, and the init sites; Blocked otherwise."""
    target = sub.statement.body[0].targets[0].target
    found: list[tuple[Product, cst.Attribute]] = []
    sites: list[tuple[cst.Attribute, cst.BaseExpression]] = []
    for ref in cls.self_references(sub.name):
        if ref is target:
            continue
        applied_here = product(ctx, cls, ref)
        site = init_site(ctx, ref) if applied_here is None else None
        if applied_here is not None:
            found.append((applied_here, ref))
        elif site is not None:
            sites.append((ref, site))
        else:
            raise Blocked(f"`self.{sub.name}` on line {ctx.line(ref)} is used other than in one product "
                          "(einsum, @, matmul, F.linear) and nn.init calls")
    if len(found) != 1:
        raise Blocked(f"`self.{sub.name}` is applied {len(found)} times (fusion needs exactly one product)")
    return found[0][0], found[0][1], sites


def _same(ctx, pairs, what: str) -> None:
    """The nodes are the same code but for the part each pair names."""
    masked = {ctx.code(node.deep_replace(part, cst.Name("_"))) for node, part in pairs}
    if len(masked) != 1:
        raise Blocked(f"{what}: " + "; ".join(f"line {ctx.line(node)}: {ctx.code(node)}" for node, _ in pairs))


def _init_edits(ctx, sites_by_role: list[list], parts: str) -> dict:
    """Each initialised weight becomes its slice `parts[i]`; a loop over all three in order
    iterates `*parts` instead."""
    edits: dict = {}
    loops: dict[int, tuple[cst.BaseExpression, dict[int, cst.Attribute]]] = {}
    for index, sites in enumerate(sites_by_role):
        for ref, site in sites:
            if site is ref:
                edits[ref] = cst.parse_expression(f"{parts}[{index}]")
            else:
                loops.setdefault(id(site), (site, {}))[1][index] = ref
    for sequence, refs in loops.values():
        edits[sequence] = _loop_sequence(sequence, refs, parts)
    return edits


def _loop_sequence(sequence, refs: dict[int, cst.Attribute], parts: str) -> cst.BaseExpression:
    elements = list(sequence.elements)
    at = {index: next(i for i, e in enumerate(elements) if e.value is ref) for index, ref in refs.items()}
    if [at.get(i) for i in range(3)] == [at.get(0, -9) + i for i in range(3)]:
        if len(elements) == 3:
            return cst.parse_expression(parts)
        starred = cst.StarredElement(cst.parse_expression(parts), comma=elements[at[2]].comma)
        return sequence.with_changes(elements=elements[:at[0]] + [starred] + elements[at[2] + 1:])
    for index, position in at.items():
        elements[position] = elements[position].with_changes(value=cst.parse_expression(f"{parts}[{index}]"))
    return sequence.with_changes(elements=elements)


def _refuse_foreign_uses(ctx, cls, names: list[str]) -> None:
    """Another object's `.w_q`, a subclass's `self.w_q`, or a "w_q" key string would dangle."""
    blocked = foreign_attribute(ctx, cls, names) or naming_string(ctx, names)
    if blocked:
        raise Blocked(blocked)
