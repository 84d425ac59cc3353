"""The rules through the whole-tree building blocks: projections built by a Linear subclass or a
factory in another file are fused (numerically equal after converting the checkpoint), a subclass
that overrides forward is refused naming it, and a ReLU/GELU written as a method or a project
function is a feed-forward activation for TFM301."""

from __future__ import annotations

import importlib
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import select_rules

LAYERS = '''
    import math

    import torch
    import torch.nn as nn


    class MyLinear(nn.Linear):
        """Keeps nn.Linear's forward."""


    class ScaledLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2


    def Linear(in_features, out_features, bias=True):
        m = nn.Linear(in_features, out_features, bias)
        nn.init.xavier_uniform_(m.weight)
        return m


    def NormedLinear(in_features, out_features, bias=True):
        m = nn.Linear(in_features, out_features, bias)
        return nn.Sequential(m, nn.LayerNorm(out_features))


    def gelu(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


    def centre(x):
        return x - x.mean(-1, keepdim=True)
    '''

ATTENTIONS = '''
    import torch.nn as nn

    from .layers import Linear, MyLinear, NormedLinear, ScaledLinear


    class FactoryAttention(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.query = Linear(d, d)
            self.key = Linear(d, d)
            self.value = Linear(d, d)

        def forward(self, x):
            return self.query(x) + self.key(x) * self.value(x)


    class SubclassAttention(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.q_proj = MyLinear(d, d, bias=False)
            self.k_proj = MyLinear(d, d, bias=False)
            self.v_proj = MyLinear(d, d, bias=False)

        def forward(self, x):
            return self.q_proj(x) * self.k_proj(x) - self.v_proj(x)


    class ScaledAttention(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.wq = ScaledLinear(d, d)
            self.wk = ScaledLinear(d, d)
            self.wv = ScaledLinear(d, d)

        def forward(self, x):
            return self.wq(x) + self.wk(x) + self.wv(x)


    class NormedAttention(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.wq = NormedLinear(d, d)
            self.wk = NormedLinear(d, d)
            self.wv = NormedLinear(d, d)

        def forward(self, x):
            return self.wq(x) + self.wk(x) + self.wv(x)


    class Model(nn.Module):
        def __init__(self, d=8):
            super().__init__()
            self.a = FactoryAttention(d)
            self.b = SubclassAttention(d)

        def forward(self, x):
            return self.a(x) + self.b(x)
    '''

FFNS = '''
    import torch.nn as nn

    from .layers import Linear, centre, gelu


    class MethodReluFFN(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.fc1 = nn.Linear(d, h)
            self.fc2 = nn.Linear(h, d)

        def forward(self, x):
            return self.fc2(self.fc1(x).relu())


    class ProjectGeluFFN(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.fc1 = nn.Linear(d, h)
            self.fc2 = nn.Linear(h, d)

        def forward(self, x):
            return self.fc2(gelu(self.fc1(x)))


    class CentredFFN(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.fc1 = nn.Linear(d, h)
            self.fc2 = nn.Linear(h, d)

        def forward(self, x):
            return self.fc2(centre(self.fc1(x)))


    class FactoryFFN(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.w_1 = Linear(d, h)
            self.w_2 = Linear(h, d)

        def forward(self, x):
            return self.w_2(nn.functional.relu(self.w_1(x)))


    class Block(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.attn = nn.MultiheadAttention(d, 2)
            self.factory = FactoryFFN(d, h)
            self.method = MethodReluFFN(d, h)
            self.project = ProjectGeluFFN(d, h)
            self.centred = CentredFFN(d, h)
    '''


def _project(root: Path, package: str) -> Path:
    folder = root / package
    folder.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (folder / "__init__.py").write_text("")
    for name, text in {"layers": LAYERS, "attentions": ATTENTIONS, "ffns": FFNS}.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text).lstrip())
    return folder


def _migrate(folder: Path, name: str, codes: str):
    path = folder / f"{name}.py"
    project = ProjectIndex.for_files(sorted(folder.glob("*.py")))
    rules = [rule() for rule in select_rules(codes.split(","))]
    return migrate_source(path.read_text(), str(path), rules, project)


def test_projections_from_a_factory_or_a_plain_subclass_are_fused(tmp_path: Path) -> None:
    result = _migrate(_project(tmp_path, "before"), "attentions", "TFM102")
    expected = textwrap.dedent(ATTENTIONS).lstrip()
    expected = expected.replace(
        "self.query = Linear(d, d)\n        self.key = Linear(d, d)\n        self.value = Linear(d, d)\n",
        "self.qkv = Linear(d, 3 * d)\n").replace(
        "return self.query(x) + self.key(x) * self.value(x)",
        "q, k, v = self.qkv(x).chunk(3, dim=-1)\n        return q + k * v").replace(
        "self.q_proj = MyLinear(d, d, bias=False)\n        self.k_proj = MyLinear(d, d, bias=False)\n"
        "        self.v_proj = MyLinear(d, d, bias=False)\n",
        "self.qkv_proj = MyLinear(d, 3 * d, bias=False)\n").replace(
        "return self.q_proj(x) * self.k_proj(x) - self.v_proj(x)",
        "q, k, v = self.qkv_proj(x).chunk(3, dim=-1)\n        return q * k - v")
    assert result.migrated == expected
    refusals = [r.reason for r in result.refusals]
    assert len(refusals) == 2
    assert "`ScaledLinear` derives from nn.Linear but defines its own forward (layers.py:12)" in refusals[0]
    assert "`wq` is built by `NormedLinear(...)` (line 42), which tf-migrate cannot show returns a plain" in refusals[1]
    assert [p.qualname for p in result.plans] == ["FactoryAttention", "SubclassAttention"]
    assert str(tmp_path / "before" / "layers.py") in result.depends


def test_fused_projections_compute_the_same_after_converting_the_checkpoint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tf_migrate.convert.state_dict import convert_state_dict

    before = _project(tmp_path, "fused_before")
    result = _migrate(before, "attentions", "TFM102")
    after = tmp_path / "fused_after"
    shutil.copytree(before, after)
    (after / "attentions.py").write_text(result.migrated)
    sys.path.insert(0, str(tmp_path))
    try:
        old = importlib.import_module("fused_before.attentions").Model().eval()
        new = importlib.import_module("fused_after.attentions").Model().eval()
    finally:
        sys.path.remove(str(tmp_path))
    state, _ = convert_state_dict(old.state_dict(), result.plans, new.state_dict())
    new.load_state_dict(state, strict=True)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(new.double()(x), old.double()(x))


def test_relu_method_project_gelu_and_factory_linears_make_feed_forwards(tmp_path: Path) -> None:
    result = _migrate(_project(tmp_path, "ffn"), "ffns", "TFM301")
    assert [(e.code, e.line) for e in result.edits] == [("TFM301", 13), ("TFM301", 23), ("TFM301", 43)]
    assert "self.w_3 = Linear(d, h)" in result.migrated  # the gate is built like the first projection
    assert "return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))" in result.migrated
    assert "return self.fc2(centre(self.fc1(x)))" in result.migrated  # not elementwise: untouched
    assert "self.fc1(x).relu()" not in result.migrated and "gelu(self.fc1(x))" not in result.migrated
