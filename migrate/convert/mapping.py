"""Which output key comes from which input keys: the plan applied to a checkpoint's key names.

Pure bookkeeping over names and shapes (no tensors, no torch), so it can be planned for a sharded
checkpoint before any shard is read. Plan keys are relative to an instance of a class; an instance
is a prefix (`blocks.3.attn.`) under which all of the plan's old keys are present.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from tf_migrate.convert.errors import ConvertError
from tf_migrate.plan import ClassPlan, NewKey, merge_plans, parse_init

NEEDS_TARGET = ("pass --check-build EXPR --source AFTER.py (the migrated model's build expression and "
                "file) so they are read off a freshly built migrated model")


@dataclass
class Op:
    """How one output key is produced: copy, concatenate or initialise."""

    kind: str  # "copy" | "cat" | "new"
    sources: list[str] = field(default_factory=list)
    dim: int = 0
    init: str = ""
    shape: tuple[int, ...] = ()


@dataclass
class Instance:
    prefix: str
    plan: ClassPlan
    changes: list[str] = field(default_factory=list)
    owned: set[str] = field(default_factory=set)  # the new keys this instance writes
    also: list[str] = field(default_factory=list)  # other classes whose plan adds the same keys here

    @property
    def label(self) -> str:
        return " or ".join([self.plan.qualname, *self.also])


@dataclass
class KeyMap:
    ops: dict[str, Op]
    instances: list[Instance]
    untouched: list[str]
    # input key -> the output keys written where it stood (keeps order and shard placement)
    placed: dict[str, list[str]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)  # planned classes with no instance here


def _anchors(plan: ClassPlan) -> list[str]:
    keys = [s for c in plan.concatenated for s in c.sources] + list(plan.renamed) + list(plan.dropped)
    return list(dict.fromkeys(keys))


def _weakly_anchored(plan: ClassPlan) -> bool:
    """Only dropped one-segment keys (a `bias` buffer) identify it: every Linear would match."""
    return not plan.concatenated and not plan.renamed and all("." not in k for k in plan.dropped)


def find_instances(plans: Sequence[ClassPlan], keys: Sequence[str],
                   target: Mapping[str, tuple] | None) -> list[Instance]:
    present = set(keys)
    found: list[Instance] = []
    for plan in plans:
        anchors = _anchors(plan)
        if not anchors:
            found.extend(_new_only_instances(plan, present, target))
            continue
        weak = _weakly_anchored(plan)
        if weak and target is None:
            raise ConvertError(
                f"the plan for {plan.qualname} ({plan.file}) is identified only by the key(s) "
                f"{', '.join(anchors)}, which any layer can have; pass --check-build and --source "
                "so the migrated model tells its instances apart")
        for prefix in _prefixes(keys, anchors[0]):
            if not all(prefix + a in present for a in anchors):
                continue
            if weak and any(prefix + d in target for d in plan.dropped):
                continue  # the migrated model still has this key: not an instance of the class
            found.append(Instance(prefix, plan))
    return found


def _new_only_instances(plan: ClassPlan, present: set[str],
                        target: Mapping[str, tuple] | None) -> list[Instance]:
    """Instances of a plan that only adds keys: prefixes where the MIGRATED model has them all."""
    added = [n.key for n in plan.new]
    if target is None:
        raise ConvertError(
            f"the plan for {plan.qualname} ({plan.file}) only adds keys ({', '.join(added)}): "
            f"nothing in the old checkpoint says where its instances are; {NEEDS_TARGET}")
    return [Instance(prefix, plan) for prefix in _prefixes(list(target), added[0])
            if all(prefix + k in target and prefix + k not in present for k in added)]


def _prefixes(keys: Sequence[str], relative: str) -> list[str]:
    return [k[: len(k) - len(relative)] for k in keys
            if k.endswith(relative) and (len(k) == len(relative) or k[len(k) - len(relative) - 1] == ".")]


def build_mapping(plans: Sequence[ClassPlan], keys: Sequence[str],
                  shape_of: Callable[[str], tuple[int, ...]],
                  target: Mapping[str, tuple] | None = None) -> KeyMap:
    plans = [p for p in merge_plans(plans) if _anchors(p) or p.new]
    if not plans:
        raise ConvertError("the plan changes no checkpoint key: the old checkpoint loads as it is")
    instances = find_instances(plans, keys, target)
    if not instances:
        classes = ", ".join(f"{p.qualname} ({p.file})" for p in plans) or "(the plan lists no class)"
        raise ConvertError(f"no key of the checkpoint matches a migrated class: {classes}")
    ops: dict[str, Op] = {}
    claimed: dict[str, str] = {}
    owners: dict[str, Instance] = {}
    for instance in instances:
        _instance_ops(instance, shape_of, target, ops, claimed, owners)
    found = {name for i in instances for name in (i.plan.qualname, *i.also)}
    unmatched = [f"{p.qualname} ({p.file})" for p in plans if p.qualname not in found]
    instances = [i for i in instances if i.changes]
    untouched = [k for k in keys if k not in claimed]
    placed: dict[str, list[str]] = {}
    for instance in instances:
        _place(instance, ops, placed, keys)
    for key in untouched:
        if key in ops:
            raise ConvertError(f"output key {key} would be written twice (it is also an untouched key)")
        ops[key] = Op("copy", [key])
        placed[key] = [key, *placed.get(key, [])]  # new keys may be placed beside it
    return KeyMap(ops, instances, untouched, placed, unmatched)


def _place(instance: Instance, ops: dict[str, Op], placed: dict[str, list[str]],
           keys: Sequence[str]) -> None:
    p, plan = instance.prefix, instance.plan
    for cat in plan.concatenated:
        placed.setdefault(p + cat.sources[0], []).append(p + cat.target)
    for old, new in plan.renamed.items():
        placed.setdefault(p + old, []).append(p + new)
    anchor = _new_key_anchor(instance, keys)
    for new in plan.new:
        if p + new.key in instance.owned:
            placed.setdefault(anchor, []).append(p + new.key)


def _new_key_anchor(instance: Instance, keys: Sequence[str]) -> str:
    """New keys are written beside the instance's first anchor, or its module's last old key."""
    anchors = _anchors(instance.plan)
    if anchors:
        return instance.prefix + anchors[0]
    inside = [k for k in keys if k.startswith(instance.prefix)]
    return (inside or list(keys))[-1]


def _claim(claimed: dict[str, str], key: str, prefix: str) -> None:
    if key in claimed:
        raise ConvertError(f"key {key} belongs to two instances ({claimed[key]!r} and {prefix!r})")
    claimed[key] = prefix


def _instance_ops(instance: Instance, shape_of, target, ops: dict[str, Op], claimed, owners) -> None:
    p, plan = instance.prefix, instance.plan
    for cat in plan.concatenated:
        sources = [p + s for s in cat.sources]
        for s in sources:
            _claim(claimed, s, p)
        _check_cat(sources, cat.dim, shape_of)
        ops[p + cat.target] = Op("cat", sources, cat.dim)
        instance.changes.append(f"{cat.target} <- cat({', '.join(cat.sources)}, dim={cat.dim})")
    for old, new in plan.renamed.items():
        _claim(claimed, p + old, p)
        ops[p + new] = Op("copy", [p + old])
        instance.changes.append(f"{new} <- {old}")
    for key in plan.dropped:
        _claim(claimed, p + key, p)
        instance.changes.append(f"dropped {key}")
    for new in plan.new:
        _new_op(instance, new, target, ops, owners)


def _new_op(instance: Instance, new: NewKey, target, ops: dict[str, Op], owners) -> None:
    key = instance.prefix + new.key
    if parse_init(new.init)[0] == "default" and target is None:
        raise ConvertError(f"new key {key} starts as the migrated model's own initialisation "
                           f"(init 'default'); {NEEDS_TARGET}")
    if target is not None and key not in target:
        raise ConvertError(f"the plan adds {key} ({instance.plan.qualname}) but the migrated model has no such key")
    op = Op("new", init=new.init, shape=_new_shape(key, new.shape, target))
    if key in ops:
        if ops[key] != op:  # two classes claim the same new key with different inits
            raise ConvertError(f"new key {key} is claimed by two plans with different inits "
                               f"({ops[key].init} and {op.init})")
        # e.g. Encoder and Decoder both add `final_norm`: keys alone cannot tell them apart, and
        # either plan writes the same tensor
        if instance.plan.qualname not in (owner := owners[key]).also + [owner.plan.qualname]:
            owner.also.append(instance.plan.qualname)
        return
    ops[key] = op
    owners[key] = instance
    instance.owned.add(key)
    instance.changes.append(f"new {new.key} {list(op.shape)} init={new.init}")


def _check_cat(sources: list[str], dim: int, shape_of) -> None:
    shapes = [tuple(shape_of(s)) for s in sources]
    rank = len(shapes[0])
    for key, shape in zip(sources, shapes):
        if len(shape) != rank or not -rank <= dim < rank:
            raise ConvertError(f"shape mismatch: {key} has shape {list(shape)}, cannot concatenate "
                               f"with {sources[0]} {list(shapes[0])} along dim {dim}")
        others = [n for i, n in enumerate(shape) if i != dim % rank]
        if others != [n for i, n in enumerate(shapes[0]) if i != dim % rank]:
            raise ConvertError(f"shape mismatch: {key} has shape {list(shape)} but {sources[0]} has "
                               f"{list(shapes[0])}; they differ outside dim {dim}")


def _new_shape(key: str, declared: list[str] | None, target) -> tuple[int, ...]:
    if target is not None and key in target:
        return tuple(target[key])
    if declared is not None and all(re.fullmatch(r"\d+", str(d)) for d in declared):
        return tuple(int(d) for d in declared)
    raise ConvertError(f"new key {key} has no numeric shape in the plan ({declared}); pass "
                       "--check-build and --source so it is read off the migrated model")


def group_pattern(keys: Sequence[str]) -> list[str]:
    """`blocks.*.ln_1.weight (x12)`: untouched keys, with layer indices folded."""
    counts: dict[str, int] = {}
    for key in keys:
        pattern = re.sub(r"\.\d+\.", ".*.", key)
        counts[pattern] = counts.get(pattern, 0) + 1
    return [p if n == 1 else f"{p} (x{n})" for p, n in counts.items()]
