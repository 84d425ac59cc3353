"""TFM101 reads an in-place mask helper defined elsewhere in the project (`mask_(scores, ...)` from a
utilities module): a fill of the strict upper triangle becomes is_causal, numerically equal; a
helper that does other work, or hides the diagonal, is refused naming it."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, load_module
from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine.file import migrate_source
from tf_migrate.rules.sdpa import EinsumAttentionToSdpa

UTIL = '''
    import torch


    def fill_above_(matrix, value=0.0, diagonal_too=True):
        """In place: `value` where column > row (and on the diagonal when diagonal_too)."""
        n, m = matrix.size(-2), matrix.size(-1)
        pairs = torch.triu_indices(n, m, offset=0 if diagonal_too else 1)
        matrix[..., pairs[0], pairs[1]] = value


    def scale_rows_(matrix, value):
        matrix.mul_(value)
'''

MODELS = '''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from .util import fill_above_, scale_rows_


    class CrossFolded(nn.Module):
        """Queries and keys of different lengths, heads in the batch; top-left causal when asked."""

        def __init__(self, width, heads, causal=False):
            super().__init__()
            self.heads = heads
            self.causal = causal
            self.q = nn.Linear(width, width)
            self.kv = nn.Linear(width, 2 * width)

        def forward(self, x, memory):
            b, tq, e = x.size()
            tk = memory.size(1)
            h = self.heads
            s = e // h
            q = self.q(x).view(b, tq, h, s).transpose(1, 2).reshape(b * h, tq, s)
            k, v = self.kv(memory).chunk(2, dim=-1)
            k = k.reshape(b, tk, h, s).transpose(1, 2).reshape(b * h, tk, s)
            v = v.reshape(b, tk, h, s).transpose(1, 2).reshape(b * h, tk, s)
            dot = torch.bmm(q, k.transpose(1, 2)) / s ** 0.5
            if self.causal:
                fill_above_(dot, value=float("-inf"), diagonal_too=False)
            dot = F.softmax(dot, dim=2)
            return torch.bmm(dot, v).view(b, h, tq, s).transpose(1, 2).reshape(b, tq, e)


    class Rescaled(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.qkv = nn.Linear(width, 3 * width)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            dot = torch.bmm(q, k.transpose(1, 2))
            scale_rows_(dot, 0.25)
            dot = F.softmax(dot, dim=-1)
            return torch.bmm(dot, v)
'''


def _package(root: Path) -> Path:
    folder = root / "helperpkg"
    folder.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (folder / "__init__.py").write_text("")
    (folder / "util.py").write_text(textwrap.dedent(UTIL).lstrip())
    (folder / "models.py").write_text(textwrap.dedent(MODELS).lstrip())
    return folder


def _line(folder: Path, code: str) -> int:
    lines = (folder / "models.py").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if code in line)


def _migrate(folder: Path):
    path = folder / "models.py"
    project = ProjectIndex.for_files(sorted(folder.glob("*.py")))
    return migrate_source(path.read_text(), str(path), [EinsumAttentionToSdpa()], project)


def test_helper_in_another_file_is_read_and_the_rewrite_is_equal(tmp_path: Path) -> None:
    folder = _package(tmp_path)
    result = _migrate(folder)
    text = result.migrated
    assert [e.line for e in result.edits] == [_line(folder, "return torch.bmm(dot, v).view")], result.edits
    assert "is_causal=bool(self.causal)" in text
    assert "fill_above_(dot" not in text
    assert str(folder / "util.py") in result.depends  # the cache must know the helper was read
    refusals = [(r.line, r.reason) for r in result.refusals]
    line = _line(folder, "scale_rows_(dot, 0.25)")
    assert len(refusals) == 1 and refusals[0][0] == line, refusals
    assert f"`scale_rows_(...)` at line {line}" in refusals[0][1] and "helperpkg/util.py line 11" in refusals[0][1]

    after = tmp_path / "after" / "helperpkg"
    after.mkdir(parents=True)
    for name in ("__init__.py", "util.py"):
        (after / name).write_text((folder / name).read_text())
    (after / "models.py").write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        before_module = importlib.import_module("helperpkg.models")
        sys.path[0] = str(tmp_path / "after")
        for key in [k for k in sys.modules if k.startswith("helperpkg")]:
            del sys.modules[key]
        after_module = importlib.import_module("helperpkg.models")
    finally:
        sys.path.remove(sys.path[0])
        for key in [k for k in sys.modules if k.startswith("helperpkg")]:
            del sys.modules[key]
    torch.manual_seed(0)
    x, memory = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64)
    for causal in (True, False):
        for lengths in ((x, memory), (memory, x)):  # fewer and more queries than keys
            before = before_module.CrossFolded(16, 4, causal=causal).double().eval()
            after_model = after_module.CrossFolded(16, 4, causal=causal).double().eval()
            after_model.load_state_dict(before.state_dict(), strict=True)
            with torch.no_grad():
                want, got = before(*lengths), after_model(*lengths)
            assert torch.allclose(got, want, atol=1e-12, rtol=0), (causal, (got - want).abs().max())


def test_helper_fixture_without_the_condition_and_in_4d_is_equal() -> None:
    """The golden's other class (unconditional call, 4-D heads, -1e9 fill) and the flag off."""
    before_module = load_module(FIXTURES / "sdpa" / "helper_causal_fill.before.py")
    after_module = load_module(FIXTURES / "sdpa" / "helper_causal_fill.after.py")
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    for name, args in (("AlwaysCausalAttention", (16, 4)), ("FlatHeadsAttention", (16, 4, False))):
        before = getattr(before_module, name)(*args).eval()
        after = getattr(after_module, name)(*args).eval()
        after.load_state_dict(before.state_dict(), strict=True)
        with torch.no_grad():
            assert torch.allclose(after(x), before(x), atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("flag", ["mask_diagonal=True", "0.0"])
def test_a_helper_call_that_is_not_a_causal_fill_is_refused(tmp_path: Path, flag: str) -> None:
    folder = _package(tmp_path)
    models = folder / "models.py"
    if flag == "0.0":  # a fill value that hides nothing
        models.write_text(models.read_text().replace('value=float("-inf")', "value=0.0"))
    else:  # the diagonal hidden as well
        models.write_text(models.read_text().replace("diagonal_too=False", "diagonal_too=True"))
    result = _migrate(folder)
    assert "F.scaled_dot_product_attention" not in result.migrated
    line = _line(folder, "fill_above_(dot")
    reasons = [r.reason for r in result.refusals if r.line == line]
    assert len(reasons) == 1
    word = "not -inf" if flag == "0.0" else "hides the diagonal too"
    assert f"`fill_above_(...)` at line {line}" in reasons[0] and word in reasons[0], reasons


INLINE = '''
import torch
import torch.nn as nn


def hide_future(scores):
    n = scores.size(-1)
    scores[..., torch.triu_indices(n, n, 1)[0], torch.triu_indices(n, n, 1)[1]] = float("-inf")


class Helper(nn.Module):
    def forward(self, q, k, v):
        sim = q @ k.transpose(-1, -2)
        hide_future(sim)
        return sim.softmax(dim=-1) @ v
'''


def test_triu_indices_written_inline_with_the_column_count_twice_is_causal(tmp_path: Path) -> None:
    result = migrate_source(INLINE, "inline.py", [EinsumAttentionToSdpa()])
    assert not result.refusals, [r.reason for r in result.refusals]
    assert "is_causal=True" in result.migrated
    before, after = (tmp_path / "b.py"), (tmp_path / "a.py")
    before.write_text(INLINE)
    after.write_text(result.migrated)
    q, k, v = (torch.randn(2, 3, 6, 4, dtype=torch.float64) for _ in range(3))
    want = load_module(before).Helper()(q, k, v)
    got = load_module(after).Helper()(q, k, v)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
