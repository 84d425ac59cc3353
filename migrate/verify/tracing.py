"""Captures a model as a torch.fx graph with the first tracer that follows its Python.

The chain, tried on BEFORE and AFTER together so both graphs come from the same tracer and can
be compared node for node: `torch.export.export(strict=False)` (real Python runs over fake
tensors, shapes specialised to the example input), `make_fx` over real tensors (data-dependent
branches are taken as the example input takes them), `fx.symbolic_trace` with every module that
holds no migrated instance as a leaf, and last an eager recording. Each failure keeps its reason.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass, field

import torch
from tf_migrate.verify.direct import through_call
from tf_migrate.verify.ops import Op, eager_ops, graph_ops, short_reason
from torch import fx, nn

EXPORT, MAKE_FX, SYMBOLIC, EAGER = "torch.export", "make_fx", "fx.symbolic_trace", "eager"


@dataclass
class Capture:
    tracer: str  # the tracer that captured both sides
    before: list[Op]
    after: list[Op]
    failures: list[str] = field(default_factory=list)  # "tracer on side: reason", in the order tried

    @property
    def is_graph(self) -> bool:
        return self.tracer != EAGER


def capture(before: nn.Module, after: nn.Module, args: tuple, regions: list[str]) -> Capture:
    failures: list[str] = []
    for name, trace in ((EXPORT, _export), (MAKE_FX, _make_fx), (SYMBOLIC, _symbolic(regions))):
        graphs = []
        for side, model in (("before", before), ("after", after)):
            try:
                with _quiet(), torch.no_grad(), through_call(model, regions):
                    graphs.append(graph_ops(*trace(model, args)))
            except Exception as exc:  # noqa: BLE001 - any tracer failure moves on to the next tracer
                failures.append(f"{name} on {side}: {short_reason(exc)}")
                break
        if len(graphs) == 2:
            return Capture(name, graphs[0], graphs[1], failures)
    with through_call(before, regions), through_call(after, regions):
        return Capture(EAGER, eager_ops(before, args), eager_ops(after, args), failures)


def _export(model: nn.Module, args: tuple) -> tuple[fx.Graph, dict]:
    program = torch.export.export(model, args, strict=False)
    return program.graph, {}


def _make_fx(model: nn.Module, args: tuple) -> tuple[fx.Graph, dict]:
    from torch.fx.experimental.proxy_tensor import make_fx

    def run(*inputs):
        return model(*inputs)

    run._orig_mod = model  # lets make_fx record each node's module path (nn_module_stack)
    traced = make_fx(run, tracing_mode="real", pre_dispatch=True, record_module_stack=True,
                     _error_on_data_dependent_ops=False)(*args)
    return traced.graph, {}


def _symbolic(regions: list[str]):
    def trace(model: nn.Module, args: tuple) -> tuple[fx.Graph, dict]:
        modules = dict(model.named_modules())
        keep = {path for path in modules for region in regions
                if not path or region == path or region.startswith(path + ".") or path.startswith(region + ".")}
        tracer = _LeafTracer({id(m) for p, m in modules.items() if p not in keep})
        concrete = {name: p.default for name, p in inspect.signature(model.forward).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        graph = tracer.trace(model, concrete_args=concrete or None)
        return graph, modules
    return trace


class _LeafTracer(fx.Tracer):
    """Traces into torch's own modules' callers only where a migrated instance lives."""

    def __init__(self, leaves: set[int]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


@contextlib.contextmanager
def _quiet():
    """torch logs whole graphs as warnings when export gives up; the reason line is enough."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)

