"""verify on code that fx.symbolic_trace cannot follow: tracer chain, per-instance numerics,
planted wrong rewrites named down to the node, package projects, user code in a child process.

Tiny models (d=16, 2 layers) keep the tracing cheap.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner
from helpers import load_module
from tf_migrate.cli import main
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import find_rule
from tf_migrate.plan import plan_document
from tf_migrate.verify import tracing
from tf_migrate.verify.command import NOTICE
from tf_migrate.verify.graphdiff import outside_diff
from tf_migrate.verify.instances import record_calls
from tf_migrate.verify.session import VerifyOptions, verify

RULES = [find_rule("TFM101")({}), find_rule("TFM102")({})]

LEGACY = '''
import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.scale = 0.3
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x, mask=None):
        B, T, C = x.shape
        q = self.query(x).view(B, T, self.h, C // self.h).transpose(1, 2)
        k = self.key(x).view(B, T, self.h, C // self.h).transpose(1, 2)
        v = self.value(x).view(B, T, self.h, C // self.h).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * self.scale
        if mask is not None:
            att = att.masked_fill(mask == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.ln, self.attn = nn.LayerNorm(d), Attention(d, h)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.ffn = lambda x: self.mlp(x)  # a lambda over a submodule: a deepcopy's still calls the original's

    def forward(self, x, mask=None):
        x = x + self.attn(self.ln(x), mask)
        return x + self.ffn(x)


class Model(nn.Module):
    def __init__(self, vocab=50, d=16, h=2, n=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, h) for _ in range(n))

    def forward(self, idx, mask=None):
        x = self.emb(idx)
        if idx.size(1) > 4:  # Python control flow on a size
            x = x * 2
        for block in self.blocks:
            x = block(x, mask)
        return x
'''
TOKENS = "torch.randint(0, 50, (2, 6))"
MASKED = "(torch.randint(0, 50, (2, 6)), (torch.arange(6) < torch.tensor([[6], [3]]))[:, None, None, :].long())"


def _pair(tmp_path: Path, source: str = LEGACY, plant: tuple[str, str] | None = None) -> tuple[Path, Path, Path]:
    """BEFORE, AFTER (migrated by TFM101 + TFM102, then `plant` replaced once) and the plan."""
    for side in ("before", "after"):
        (tmp_path / side).mkdir()
    before, after = tmp_path / "before" / "tiny.py", tmp_path / "after" / "tiny.py"
    before.write_text(source)
    result = migrate_source(source, "tiny.py", RULES)
    migrated = result.migrated
    if plant:
        assert migrated.count(plant[0]) == 1, plant
        migrated = migrated.replace(*plant)
    after.write_text(migrated)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(plan_document(result.plans)))
    return before, after, plan


def test_python_control_flow_optional_args_and_lambdas_are_traced_and_proved_per_instance(tmp_path):
    before, after, plan = _pair(tmp_path)
    result = verify(VerifyOptions(before, after, "Model()", [TOKENS, MASKED], plan=plan))
    assert result.verified, result.failures
    assert result.tracing == "torch.export" and result.trace_failures == []
    assert result.outside.ok and result.outside.compared > 10
    assert {(e.rule, p.path) for e in result.evidence for p in e.paths if p.ok} == {
        (rule, f"blocks.{i}.attn") for rule in ("TFM101", "TFM102") for i in (0, 1)}
    # the float64 models are rebuilt and loaded: the lambdas call their own model's submodules
    assert {(c.path, c.dtype) for c in result.instances if c.ok and c.calls == 2} == {
        (f"blocks.{i}.attn", dtype) for i in (0, 1) for dtype in ("float32", "float64")}
    assert all(c.max_abs < 1e-12 for c in result.instances if c.dtype == "float64")
    assert {(p.path, p.dtype) for p in result.low_precision} == {
        (f"blocks.{i}.attn", dtype) for i in (0, 1) for dtype in ("float16", "bfloat16")}
    assert all(0 < p.before < 0.1 and 0 < p.after < 0.1 for p in result.low_precision if not p.problem)


def test_a_data_dependent_branch_is_followed_by_make_fx(tmp_path):
    source = LEGACY.replace("        if idx.size(1) > 4:", "        if idx.sum() > 0:")
    before, after, plan = _pair(tmp_path, source)
    result = verify(VerifyOptions(before, after, "Model()", [TOKENS], plan=plan))
    assert result.verified, result.failures
    assert result.tracing == "make_fx"
    (reason,) = result.trace_failures
    assert reason.startswith("torch.export on before: ") and "tiny.py" in reason


def test_a_direct_forward_call_is_hooked_and_traced_as_the_module(tmp_path):
    """`self.attn.forward(...)` skips nn.Module.__call__ (its hooks and the tracers' module stack):
    verify routes it through the module, so the instance's inputs are recorded and its operations
    are counted under its own path instead of the caller's."""
    source = LEGACY.replace("x = x + self.attn(self.ln(x), mask)", "x = x + self.attn.forward(self.ln(x), mask)")
    assert source != LEGACY
    before, after, plan = _pair(tmp_path, source)
    result = verify(VerifyOptions(before, after, "Model()", [TOKENS, MASKED], plan=plan))
    assert result.verified, result.failures
    assert result.tracing == "torch.export" and result.outside.ok
    assert {(e.rule, p.path) for e in result.evidence for p in e.paths if p.ok} == {
        (rule, f"blocks.{i}.attn") for rule in ("TFM101", "TFM102") for i in (0, 1)}
    assert {(c.path, c.dtype, c.calls) for c in result.instances if c.ok} == {
        (f"blocks.{i}.attn", dtype, 2) for i in (0, 1) for dtype in ("float32", "float64")}
    (tmp_path / "again").mkdir()
    old, _ = _tiny_models(tmp_path / "again", source)
    calls = record_calls(old, ["blocks.0.attn"], [(torch.randint(0, 50, (2, 6)),)])
    assert len(calls["blocks.0.attn"]) == 1
    attn = old.blocks[0].attn
    assert "forward" not in vars(attn) and not attn._forward_hooks and not attn._forward_pre_hooks  # left as it was


def _tiny_models(tmp_path, source: str = LEGACY, plant=None):
    before, after, _ = _pair(tmp_path, source, plant)
    torch.manual_seed(0)
    old = load_module(before).Model().eval()
    torch.manual_seed(0)
    return old, load_module(after).Model().eval()


def _fail(*args):
    raise RuntimeError("tracer refused")


def test_symbolic_trace_with_leaves_then_eager_when_every_tracer_fails(tmp_path, monkeypatch):
    old, new = _tiny_models(tmp_path)
    block_old, block_new = old.blocks[0], new.blocks[0]  # no size branch at this level
    x = torch.randn(2, 6, 16)
    monkeypatch.setattr(tracing, "_export", _fail)
    monkeypatch.setattr(tracing, "_make_fx", _fail)
    found = tracing.capture(block_old, block_new, (x,), ["attn"])
    assert found.tracer == "fx.symbolic_trace"
    assert [reason.split(" (at ")[0] for reason in found.failures] == [
        "torch.export on before: RuntimeError: tracer refused", "make_fx on before: RuntimeError: tracer refused"]
    assert ("mlp", "sequential") in {(op.path, op.name) for op in found.before}  # a leaf: not traced into
    monkeypatch.setattr(tracing, "_symbolic", lambda regions: _fail)
    found = tracing.capture(block_old, block_new, (x,), ["attn"])
    assert found.tracer == "eager" and len(found.failures) == 3
    assert {"softmax", "scaled_dot_product_attention"} <= {op.name for op in found.before + found.after}


def test_a_change_outside_the_migrated_modules_is_named_node_for_node(tmp_path):
    old, new = _tiny_models(tmp_path, plant=("            x = x * 2", "            x = x + 2"))
    found = tracing.capture(old, new, (torch.randint(0, 50, (2, 6)),), ["blocks.0.attn", "blocks.1.attn"])
    diff = outside_diff(found.before, found.after, ["blocks.0.attn", "blocks.1.attn"])
    assert diff.first == ("node 1 outside the migrated modules: before mul in <root> -> [2, 6, 16] "
                          "(tiny.py:50: x = x * 2), after add in <root> -> [2, 6, 16] (tiny.py:49: x = x + 2)")


@pytest.mark.parametrize("plant, named", [
    # the mask passed is the original's fill condition itself, not its complement
    (("attn_mask=(mask != 0)", "attn_mask=(mask == 0)"), "; eq = before's eq (tiny.py:24: att = att.masked_fill("),
    # q, k, v and the mask all agree: the kernel call itself departs
    (("            scale=self.scale,\n", ""), "; ne = before's not eq (tiny.py:24:"),
    # the query argument equals the original's k
    (("q, k, v = self.qkv(x).chunk(3, dim=-1)", "k, q, v = self.qkv(x).chunk(3, dim=-1)"),
     "its inputs: transpose = before's transpose_1 (tiny.py:20: k = self.key(x)"),
], ids=["mask-inverted", "scale-dropped", "qk-swapped"])
def test_planted_wrong_rewrites_fail_naming_the_first_diverging_node(tmp_path, plant, named):
    before, after, plan = _pair(tmp_path, plant=plant)
    result = verify(VerifyOptions(before, after, "Model()", [MASKED], plan=plan))
    assert not result.verified
    assert result.divergence.path == "blocks.0.attn" and not result.divergence.inherited
    assert result.first_node.startswith("blocks.0.attn: scaled_dot_product_attention at tiny.py:"), result.first_node
    assert named in result.first_node, result.first_node
    assert f"first diverging node: {result.first_node}" in result.failures


PACKAGE = {
    "__init__.py": "",
    "helpers.py": "def residual(x, f):\n    return x + f(x)\n",
    "layers.py": LEGACY.split("\n\nclass Model")[0],
    "model.py": ("import torch\nfrom torch import nn\n\nfrom pkg.helpers import residual\nfrom .layers import Block\n\n\n"
                 "class Model(nn.Module):\n    def __init__(self, d=16):\n        super().__init__()\n"
                 "        self.emb = nn.Embedding(50, d)\n        self.blocks = nn.ModuleList(Block(d, 2) for _ in range(2))\n\n"
                 "    def forward(self, idx):\n        x = self.emb(idx)\n        for block in self.blocks:\n"
                 "            x = residual(x, block)\n        return x\n"),
}


def test_whole_project_with_a_module_build_and_a_plan(tmp_path):
    """Both sides are package `pkg` (absolute and relative imports, a helper in another file)."""
    for name, text in PACKAGE.items():
        (tmp_path / "before" / "pkg").mkdir(parents=True, exist_ok=True)
        (tmp_path / "before" / "pkg" / name).write_text(text)
    plan = tmp_path / "plan.json"
    run = CliRunner().invoke(main, [str(tmp_path / "before"), "--select", "TFM101,TFM102", "--plan", str(plan),
                                    "--output-dir", str(tmp_path / "after")])
    assert run.exit_code == 1 and (tmp_path / "after" / "pkg" / "layers.py").is_file(), run.output
    result = verify(VerifyOptions(tmp_path / "before", tmp_path / "after", "pkg.model:Model()", [TOKENS], plan=plan))
    assert result.verified, result.failures
    assert result.tracing == "torch.export"
    assert sorted({c.path for c in result.instances}) == ["blocks.0.attn", "blocks.1.attn"]
    assert "pkg" not in sys.modules  # each side's copy left sys.modules after import


def _cli(*args: str):
    return CliRunner().invoke(main, ["verify", *args])


@pytest.mark.parametrize("exit_call, message", [
    ("sys.exit(0)", "called sys.exit(0)"),
    ("os._exit(0)", "could not run: the verification process ended without a result"),
])
def test_user_code_that_exits_at_import_could_not_run(tmp_path, exit_call, message):
    before = tmp_path / "before.py"
    before.write_text(f"import os, sys\n{exit_call}\n")
    run = _cli(str(before), str(before), "--build", "Model()")
    assert run.exit_code == 2, run.output
    assert run.output.splitlines()[0] == NOTICE
    assert message in run.output and "Traceback" not in run.output


def test_help_says_verify_executes_the_files():
    run = _cli("--help")
    assert "EXECUTES the given files" in run.output
