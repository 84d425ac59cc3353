"""The import-only pre-check never rules out a file whose class bases may resolve to torch.nn.*."""

from __future__ import annotations

import pytest

from tf_migrate.analysis.nn_bases import may_define_modules


def _bases(source: str) -> list[bool]:
    return [may_define_modules(source)]


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


def test_unparseable_text_is_left_to_libcst():
    assert may_define_modules("def f(:\n")


def test_one_module_class_among_others_is_enough():
    source = "import torch.nn as nn\nclass A:\n    pass\nclass B(nn.Module):\n    pass\n"
    assert may_define_modules(source)


@pytest.mark.parametrize("source", [
    "import torch.nn as nn\ntry:\n    pass\nexcept ImportError:\n    class A(nn.Module):\n        pass\n",
    "import torch.nn as nn\ndef build():\n    if True:\n        class A(nn.Module):\n            pass\n",
    "import torch.nn as nn\nfor _ in range(2):\n    pass\nelse:\n    with open('f'):\n        class A(nn.Module):\n            pass\n",
    "import torch.nn as nn\n@decorate\nclass A(nn.Module):\n    pass\n",
])
def test_nested_classes_are_found(source):
    assert may_define_modules(source)

