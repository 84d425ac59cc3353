"""Fusing raw `nn.Parameter` q/k/v weights: one stacked parameter, one product, one split.

The weights are stacked along the dimension each product maps to its output, so the fused
product is the three products side by side. `nn.init` calls on the old weights are rewritten to
initialise each slice of the stacked one as its own tensor: the same fans and bounds, the same
distribution per slice (and the same values where the init fills a strided view in order).
Any other use of an old weight, anywhere in the file, blocks the fusion. Raw biases added to
the products (`x @ self.w_q + self.b_q`) are stacked the same way into one 1-D bias added once.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from tf_migrate.analysis.nodes import atom_code
from tf_migrate.rules.fused_qkv.projections import (ROLES, Triple, applied, different_inputs, foreign_attribute,
                                                   naming_string)
from tf_migrate.rules.fused_qkv.qkv_split import (Blocked, constructor_edits, forward_edits, replaced, split_suffix,
                                                   total_size)
from tf_migrate.rules.fused_qkv.old_keys import old_key_reader
from tf_migrate.rules.fused_qkv.raw_weights import Product, bias_size, init_site, product, shape


@dataclass
class RawBiases:
    """The raw biases added to the three products, in q, k, v order."""

    names: list[str]
    subs: list
    sizes: list[cst.BaseExpression]
    sites: list[list]  # per role, the nn.init sites
    fused_name: str


@dataclass
class RawFusion:
    replacements: dict
    dim: int  # the weight dimension the three are stacked along (the checkpoint's cat dim)
    biases: RawBiases | None = None


def raw_fusion(ctx, cls, triple: Triple, subs) -> RawFusion:
    names = [triple.attributes[r] for r in ROLES]
    _refuse_foreign_uses(ctx, cls, names)
    uses = [_uses(ctx, cls, sub) for sub in subs]
    products = [p for p, _, _ in uses]
    apps = [applied(ctx, cls, name, p.node, p.input) for name, p in zip(names, products)]
    blocked = next((a for a in apps if isinstance(a, str)), None) or different_inputs(ctx, apps)
    if blocked:
        raise Blocked(blocked)
    biases = _biases(ctx, cls, products, names)
    _same(ctx, [(p.node, [ref] + ([p.bias] if p.bias is not None else [])) for p, ref, _ in uses],
          "the three are not applied the same way")
    dim = products[0].weight_dim
    einsums = all(ctx.names.is_call(p.node, "torch.einsum") for p in products)
    sizes = [shape(ctx, sub, any_rank=einsums)[dim] for sub in subs]
    _same(ctx, [(sub.call, [size]) for sub, size in zip(subs, sizes)],
          "the weights differ in more than their output size")
    outs = [ctx.code(size) for size in sizes]
    fused = cst.parse_expression(f"self.{triple.fused_name}")
    swaps = {uses[0][1]: fused}
    if biases is not None:
        swaps[products[0].bias] = cst.parse_expression(f"self.{biases.fused_name}")
    value = atom_code(ctx, replaced(ctx, products[0].node, swaps))
    edits = forward_edits(ctx, apps, value + split_suffix(outs, products[0].output_dim))
    constructor = subs[0].call.deep_replace(sizes[0], cst.parse_expression(total_size(outs)))
    edits.update(constructor_edits(ctx, [s.statement for s in subs],
                                   f"self.{triple.fused_name} = {ctx.code(constructor)}"))
    edits.update(_init_edits(ctx, [sites for _, _, sites in uses], f"self.{triple.fused_name}"
                             + split_suffix(outs, dim)))
    if biases is not None:
        if [ctx.code(size) for size in biases.sizes] != outs:
            raise Blocked("the biases' sizes (" + ", ".join(ctx.code(b) for b in biases.sizes)
                          + f") are not spelled as the weights' output sizes ({', '.join(outs)})")
        constructor = biases.subs[0].call.deep_replace(biases.sizes[0], cst.parse_expression(total_size(outs)))
        edits.update(constructor_edits(ctx, [s.statement for s in biases.subs],
                                       f"self.{biases.fused_name} = {ctx.code(constructor)}"))
        edits.update(_init_edits(ctx, biases.sites, f"self.{biases.fused_name}" + split_suffix(outs, 0)))
    return RawFusion(edits, dim, biases)


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


def _biases(ctx, cls, products: list[Product], weights: list[str]) -> RawBiases | None:
    """The raw bias triple added to the products (`x @ self.w_q + self.b_q`), or None when no
    product adds one; Blocked when only some do, or a bias is used other than in its sum and
    `nn.init` calls, or the products do not put the output size last (a bias broadcasts there)."""
    added = [p.bias for p in products]
    if all(b is None for b in added):
        return None
    if any(b is None for b in added):
        raise Blocked("bias presence differs: " + ", ".join(
            f"{w}: {'self.' + b.attr.value if b is not None else 'no bias'}" for w, b in zip(weights, added)))
    if any(p.output_dim != -1 for p in products):
        raise Blocked("a raw bias is added to a product whose output size is not its last dimension")
    names = [b.attr.value for b in added]
    fused_name = _fused_name(names)
    if fused_name is None:
        raise Blocked(f"the biases ({', '.join(names)}) are not named alike but for q, k and v")
    if fused_name in cls.submodules or fused_name in cls.methods or next(cls.self_references(fused_name), None):
        raise Blocked(f"the class already has `{fused_name}`")
    subs = [cls.submodules[n] for n in names]
    foreign = foreign_attribute(ctx, cls, names) or naming_string(ctx, names) or old_key_reader(ctx, names)
    if foreign:
        raise Blocked(foreign)
    sites = []
    for sub, bias in zip(subs, added):
        target = sub.statement.body[0].targets[0].target
        found = []
        for ref in cls.self_references(sub.name):
            if ref is target or ref is bias:
                continue
            site = init_site(ctx, ref)
            if site is None:
                raise Blocked(f"`self.{sub.name}` on line {ctx.line(ref)} is used other than added to its product "
                              "and in nn.init calls")
            found.append((ref, site))
        sites.append(found)
    sizes = [bias_size(ctx, sub) for sub in subs]
    _same(ctx, [(sub.call, [size]) for sub, size in zip(subs, sizes)], "the biases differ in more than their size")
    return RawBiases(names, subs, sizes, sites, fused_name)


def _fused_name(names: list[str]) -> str | None:
    """`b_q`, `b_k`, `b_v` -> `b_qkv`; `q_bias`... -> `qkv_bias`: the one affix around the role."""
    for roles in (("q", "k", "v"), ("query", "key", "value")):
        for at in range(len(names[0])):
            pre, post = names[0][:at], names[0][at + len(roles[0]):]
            if names[0][at:at + len(roles[0])] == roles[0] and [pre + r + post for r in roles] == names:
                return f"{pre}qkv{post}"
    return None


def _same(ctx, pairs, what: str) -> None:
    """The nodes are the same code but for the parts each pair names."""
    masked = {ctx.code(replaced(ctx, node, {part: cst.Name("_") for part in parts})) for node, parts in pairs}
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
