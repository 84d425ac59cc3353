"""Which operations each module path performs: from a torch.fx graph, or recorded eagerly.

Both sources give the same data, a list of `Op(path, name)` with names normalised so that
`F.softmax`, `Tensor.softmax` and an `nn.Softmax` module are all `softmax`, and `@`,
`torch.matmul` and `Tensor.matmul` are all `matmul`.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Op:
    path: str
    name: str
    shape: tuple = ()  # the output's shape where the graph records it (not part of the eager record)
    where: str = field(default="", compare=False)  # "file.py:LINE: code" of the user's line that made it
    node: str = field(default="", compare=False)  # the graph node's name
    file: str = field(default="", compare=False)  # the user's file and line that made it (full path)
    line: int = field(default=0, compare=False)


class TraceFailure(Exception):
    pass


# Activation modules whose functional twins' names the generic conversion below cannot guess.
_MODULE_FUNCTIONS = {"SiLU": "silu", "ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leaky_relu",
                     "PReLU": "prelu", "GELU": "gelu", "ELU": "elu", "SELU": "selu", "CELU": "celu"}


def _module_op(class_name: str) -> str:
    """A module's class name as its functional twin is called: LayerNorm -> layer_norm."""
    if class_name in _MODULE_FUNCTIONS:
        return _MODULE_FUNCTIONS[class_name]
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", class_name)
    return _normalise(re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name))


def _normalise(name: str) -> str:
    name = name.strip("_").lower()
    return name[1:] if name.startswith("r") and name[1:] in ("matmul",) else name


def graph_ops(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[Op]:
    """Every operation node of a captured graph: aten ops (export, make_fx) or torch calls (fx)."""
    ops = []
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        name = _node_name(node, modules)
        if name.startswith("assert") or name in _BOOKKEEPING:
            continue
        file, line, code = _user_frame(node)
        where = f"{Path(file).name}:{line}: {code}" if file else ""
        ops.append(Op(_node_path(node), name, _shape(node), where, node.name, file, line))
    return ops


# Nodes the exporter adds for its own checks, not computations of the model.
_BOOKKEEPING = {"sym_constrain_range_for_size", "sym_size", "sym_numel", "sym_stride", "local_scalar_dense"}
# aten overloads whose packet name differs from the function the user called
_ATEN_ALIASES = {"split_with_sizes": "split", "softmax": "softmax", "unsafe_split": "split"}


def short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}{_where(exc)}"


def _where(exc: BaseException) -> str:
    """The innermost line of the user's code (not torch's) that tracing was in when it failed."""
    torch_dir = Path(torch.__file__).parent
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if torch_dir not in Path(f.filename).parents]
    return f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno}: {frames[-1].line})" if frames[1:] else ""


def _node_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _user_frame(node: fx.Node) -> tuple[str, int, str]:
    """The last frame of the node's stack trace that is the user's code, not torch's: (file, line, code)."""
    torch_dir = str(Path(torch.__file__).parent)
    found = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)', node.meta.get("stack_trace") or "")
    user = [(f, line, code) for f, line, code in found if not f.startswith(torch_dir)]
    if not user:
        return "", 0, ""
    file, line, code = user[-1]
    return file, int(line), code.split("  #")[0].strip()


def _shape(node: fx.Node) -> tuple:
    value = node.meta.get("val")
    return tuple(int(d) if isinstance(d, int) else str(d) for d in value.shape) if isinstance(value, torch.Tensor) else ()


def _node_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return _module_op(type(modules[node.target]).__name__)
    if node.op == "call_method":
        return _normalise(node.target)
    if isinstance(node.target, torch._ops.OpOverload):
        packet = node.target._opname
        return _ATEN_ALIASES.get(packet, _normalise(packet))
    return _normalise(getattr(node.target, "__name__", str(node.target)))


class _Recorder(TorchFunctionMode):
    def __init__(self, stack: list[str], ops: list[Op]):
        super().__init__()
        self.stack, self.ops = stack, ops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.ops.append(Op(self.stack[-1], _normalise(getattr(func, "__name__", str(func)))))
        return func(*args, **(kwargs or {}))


def eager_ops(model: nn.Module, args: tuple) -> list[Op]:
    """Runs `model` once and records every torch function call under the innermost module path."""
    stack, ops, handles = [""], [], []

    def enter(module, args, path):
        stack.append(path)

    def leave(module, args, output):
        stack.pop()  # a hook that returned a value would replace the module's output

    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_pre_hook(lambda m, a, p=path: enter(m, a, p)))
            handles.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad(), _Recorder(stack, ops):
            model(*args)
    except Exception as exc:  # noqa: BLE001 - the evidence then says so instead of crashing verify
        ops.append(Op("", f"error: {exc!r}"))
    finally:
        for handle in handles:
            handle.remove()
    return ops
