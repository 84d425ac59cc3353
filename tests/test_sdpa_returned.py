"""TFM101 on attention that returns its probabilities beside the output: callers are read across
the files of the run. Every caller ignores them -> migrated, `None` returned in their place,
numerically equal; one caller in another file reads them, or no caller is found -> refused, naming
that caller (file and line) or saying none was found."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine.file import migrate_source
from tf_migrate.rules.sdpa import EinsumAttentionToSdpa

SCORING = '''
    import math

    import torch
    import torch.nn as nn


    class Scoring(nn.Module):
        def __init__(self):
            super(Scoring, self).__init__()
            self.norm = nn.Softmax(dim=-1)

        def forward(self, q, k, v, mask=None):
            d = q.size(-1)
            s = q @ k.transpose(2, 3) / math.sqrt(d)
            if mask is not None:
                s = s.masked_fill(mask == 0, -10000)
            s = self.norm(s)
            v = s @ v
            return v, s


    def attend(q, k, v, dropout=None):
        p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)
        if dropout is not None:
            p = dropout(p)
        return p @ v, p
'''

BLOCK = '''
    import torch.nn as nn

    from .scoring import Scoring, attend


    class Block(nn.Module):
        def __init__(self, width, heads):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(width, 3 * width)
            self.scoring = Scoring()
            self.drop = nn.Dropout(0.1)

        def forward(self, x, mask=None):
            b, t, e = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
            y, maps = self.scoring(q, k, v, mask=mask)
            z = attend(q, k, v, dropout=self.drop)[0]
            return (y + z).transpose(1, 2).reshape(b, t, e)
'''


def _package(root: Path, block: str = BLOCK) -> Path:
    folder = root / "retpkg"
    folder.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (folder / "__init__.py").write_text("")
    (folder / "scoring.py").write_text(textwrap.dedent(SCORING).lstrip())
    if block:
        (folder / "block.py").write_text(textwrap.dedent(block).lstrip())
    return folder


def _migrate(folder: Path):
    path = folder / "scoring.py"
    project = ProjectIndex.for_files(sorted(folder.glob("*.py")))
    return migrate_source(path.read_text(), str(path), [EinsumAttentionToSdpa()], project)


def _import(root: Path):
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("retpkg.block")
    finally:
        sys.path.remove(str(root))
        for key in [k for k in sys.modules if k.startswith("retpkg")]:
            del sys.modules[key]


def test_probabilities_no_caller_reads_become_none_and_outputs_stay_equal(tmp_path: Path) -> None:
    folder = _package(tmp_path / "before")
    result = _migrate(folder)
    assert not result.refusals, [r.reason for r in result.refusals]
    assert len(result.edits) == 2
    assert result.migrated.count("F.scaled_dot_product_attention(") == 2
    assert "return v, None" in result.migrated and "return F.scaled_dot_product_attention(" in result.migrated
    assert str(folder / "block.py") in result.depends
    after = _package(tmp_path / "after")
    (after / "scoring.py").write_text(result.migrated)

    before_block, after_block = _import(tmp_path / "before"), _import(tmp_path / "after")
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    keep = torch.ones(2, 1, 1, 5, dtype=torch.long)
    keep[0, ..., -2:] = 0
    before = before_block.Block(16, 4).double().eval()
    migrated = after_block.Block(16, 4).double().eval()
    migrated.load_state_dict(before.state_dict(), strict=True)
    with torch.no_grad():
        for mask in (keep, None):
            assert torch.allclose(migrated(x, mask), before(x, mask), atol=1e-12, rtol=0)


@pytest.mark.parametrize("edit, words", [
    (("y, maps = self.scoring(q, k, v, mask=mask)", "y, maps = self.scoring(q, k, v, mask=mask)\n            self.maps = maps"),
     ["`s` are returned at line 19", "`maps`, bound from `self.scoring(q, k, v, mask=mask)` at line 17, is read at "
      "line 18 in retpkg/block.py"]),
    (("z = attend(q, k, v, dropout=self.drop)[0]", "z, self.p = attend(q, k, v, dropout=self.drop)"),
     ["`p` are returned at line 26", "binds it to `self.p` in retpkg/block.py"]),
    (("self.scoring = Scoring()", "self.scoring = nn.ModuleList([Scoring()])"),
     ["the `Scoring(...)` made at line 11 is kept in a way tf-migrate does not follow"]),
])
def test_a_caller_in_another_file_that_reads_them_is_named(tmp_path: Path, edit, words) -> None:
    folder = _package(tmp_path, BLOCK.replace("        " + edit[0], "        " + edit[1]))
    result = _migrate(folder)
    reasons = [r.reason for r in result.refusals]
    assert len(reasons) == 1, reasons
    assert all(w in reasons[0] for w in words), reasons[0]
    assert result.migrated.count("F.scaled_dot_product_attention(") == 1  # the other one still migrates


def test_no_caller_in_the_run_is_a_refusal(tmp_path: Path) -> None:
    result = _migrate(_package(tmp_path, block=""))
    reasons = [r.reason for r in result.refusals]
    assert len(reasons) == 2 and all("no caller of" in r for r in reasons), reasons
    assert result.edits == []


def test_an_optional_instance_set_to_none_and_tested_for_none_reads_nothing(tmp_path: Path) -> None:
    """`self.scoring = None` on another branch and `if self.scoring is not None:` neither call the
    module nor read its results: the probabilities are still ignored by every caller."""
    pad = " " * 12
    block = BLOCK.replace(f"{pad}self.scoring = Scoring()\n",
                          f"{pad}if heads:\n{pad}    self.scoring = Scoring()\n{pad}else:\n{pad}    self.scoring = None\n")
    block = block.replace(f"{pad}y, maps = self.scoring(q, k, v, mask=mask)\n",
                          f"{pad}y = v\n{pad}if self.scoring is not None:\n{pad}    y, maps = self.scoring(q, k, v, mask=mask)\n")
    assert "self.scoring = None" in block and "if self.scoring is not None:" in block
    result = _migrate(_package(tmp_path, block))
    assert not result.refusals, [r.reason for r in result.refusals]
    assert result.migrated.count("F.scaled_dot_product_attention(") == 2
