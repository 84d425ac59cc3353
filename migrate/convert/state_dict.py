"""Applying a plan to a state_dict in memory (for tests, verification, and notebooks)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from tf_migrate.convert.mapping import KeyMap, build_mapping
from tf_migrate.convert.reading import Checkpoint, Shard
from tf_migrate.convert.tensors import output_shards
from tf_migrate.plan import ClassPlan


def convert_state_dict(state: Mapping[str, Any], plans: Iterable[ClassPlan],
                       target: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], KeyMap]:
    """The migrated model's state_dict from the original's, and what was done.

    `target` (a freshly built migrated model's state_dict) is needed for plans that dropped keys
    alone identify, plans that only add keys (their instances are found among the target's keys),
    new keys whose shape the plan does not spell out, and new keys with init "default" (their
    values are copied from it).
    """
    shard = Shard("<memory>", list(state), lambda k: tuple(state[k].shape), state.__getitem__)
    ckpt = Checkpoint("torch", "<memory>", [shard])
    shapes = {k: tuple(v.shape) for k, v in target.items()} if target is not None else None
    keymap = build_mapping(list(plans), ckpt.keys(), ckpt.shape, shapes)
    _, converted = next(output_shards(ckpt, keymap, target))
    return converted, keymap
