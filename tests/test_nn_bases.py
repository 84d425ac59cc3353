"""The import-only pre-check never rules out a base that resolves to torch.nn.*."""

from __future__ import annotations

import libcst as cst
import pytest

from tf_migrate.nn_bases import may_be_torch_nn, torch_bindings


def _bases(source: str) -> list[bool]:
    module = cst.parse_module(source)
    bindings = torch_bindings(module)
    classes = [s for s in module.body if isinstance(s, cst.ClassDef)]
    return [may_be_torch_nn(b.value, bindings) for c in classes for b in c.bases]


@pytest.mark.parametrize("imports, base", [
    ("import torch", "torch.nn.Module"),
    ("import torch.nn", "torch.nn.Module"),
    ("import torch.nn as nn", "nn.Module"),
    ("from torch import nn", "nn.Module"),
    ("from torch.nn import Module", "Module"),
    ("from torch.nn import Module as M", "M"),
    ("from torch.nn.modules.module import Module", "Module"),
    ("from torch import nn as tnn", "tnn.Linear"),
    ("from torch.nn import *", "Module"),
    ("import torch", "Generic[torch.nn.Module]"),
    ("def f():\n    import torch.nn as nn", "nn.Module"),
])
def test_kept(imports, base):
    assert _bases(f"{imports}\nclass A({base}):\n    pass\n") == [True]


@pytest.mark.parametrize("imports, base", [
    ("import torch", "torch.autograd.Function"),
    ("from typing import Generic, TypeVar", "Generic[T]"),
    ("from .module import Module", "Module"),
    ("import torchvision.nn as nn", "nn.Module"),
    ("", "object"),
])
def test_ruled_out(imports, base):
    assert _bases(f"{imports}\nclass A({base}):\n    pass\n") == [False]
