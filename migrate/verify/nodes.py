"""Inside a migrated module whose output differs: the first graph node that departs.

Both modules are captured with make_fx on the very call that differed and run node by node. An
AFTER node agrees when its value equals some BEFORE node's value (same shape, within tolerance).
Walking back from the output through nodes that do not agree, the culprit is the first one whose
tensor inputs all agree: its inputs are right, its result is not. Its inputs are named by the
BEFORE nodes they equal, so q and k swapped in a fused split shows as q equal to BEFORE's k. A
boolean mask also agrees when it is the complement of one (`masked_fill(mask == 0)` becomes
SDPA's `attn_mask=mask != 0`).
"""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from tf_migrate.verify.ops import graph_ops, short_reason
from torch import fx, nn


def first_node(before: nn.Module, after: nn.Module, args: tuple, kwargs: dict, rtol: float, atol: float) -> str:
    try:
        old_graph, old_values = _run(before, args, kwargs)
        new_graph, new_values = _run(after, args, kwargs)
    except Exception as exc:  # noqa: BLE001 - the module-level finding stands without the node
        return f"(node not located: {short_reason(exc)})"
    where = {op.node: op for op in graph_ops(old_graph, {}) + graph_ops(new_graph, {})}
    known = [(name, value) for name, value in old_values.items() if isinstance(value, torch.Tensor)]

    def twin(value) -> str | None:
        if not isinstance(value, torch.Tensor):
            return "const"
        for name, old in known:
            if old.shape == value.shape and old.dtype == value.dtype and _close(old, value, rtol, atol):
                return name
            if old.dtype == value.dtype == torch.bool and old.shape == value.shape and torch.equal(old, ~value):
                return f"not {name}"  # SDPA's boolean mask keeps where the old fill hid: the complement
        return None

    nodes = {node.name: node for node in new_graph.nodes}
    output = next(node for node in new_graph.nodes if node.op == "output")
    current = next((n for n in output.all_input_nodes if twin(new_values.get(n.name)) is None), None)
    while current is not None:
        if current.op in ("placeholder", "get_attr"):
            return f"{current.name} ({current.op}) already differs"
        bad = next((n for n in current.all_input_nodes if n.op == "call_function"
                    and twin(new_values.get(n.name)) is None), None)
        if bad is None:
            return _describe(current, where, old_graph, twin, new_values)
        current = nodes[bad.name]
    return "(no single node: the outputs differ only in combination)"


def _describe(node: fx.Node, where: dict, old_graph: fx.Graph, twin, values: dict) -> str:
    op = where.get(node.name)
    name = op.name if op else str(node.target)
    label = name + (f" [{node.name}]" if node.name != name else "") + (f" at {op.where}" if op and op.where else "")
    old_lines = {op.node: op.where for op in graph_ops(old_graph, {})}
    inputs = []
    for arg in node.all_input_nodes:
        match = twin(values.get(arg.name))
        if match not in (None, "const"):
            line = old_lines.get(match.removeprefix("not "))
            inputs.append(f"{arg.name} = before's {match}" + (f" ({line})" if line else ""))
    return label + ("; its inputs: " + "; ".join(inputs) if inputs else "")


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    if not a.is_floating_point():
        return torch.equal(a, b)
    return bool(torch.allclose(a.double(), b.double(), rtol, atol, equal_nan=True))


def _run(module: nn.Module, args: tuple, kwargs: dict) -> tuple[fx.Graph, dict]:
    from torch.fx.experimental.proxy_tensor import make_fx

    def call(a, kw):
        return module(*a, **kw)

    call._orig_mod = module
    with torch.no_grad():
        traced = make_fx(call, tracing_mode="real", pre_dispatch=True, record_module_stack=True,
                         record_stack_traces=True, _error_on_data_dependent_ops=False)(args, kwargs)
    values: dict = {}

    class _Keep(fx.Interpreter):
        def run_node(self, node):
            values[node.name] = result = super().run_node(node)
            return result

    with torch.no_grad():
        _Keep(traced).run(*pytree.tree_leaves((args, kwargs)))
    return traced.graph, values
