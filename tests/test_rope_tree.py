"""TFM401 across the files of a tree: a sinusoidal table built in one file and added to the tokens
in another is a component of both files, refused here with its true reason (a model that runs no
attention the tree shows; a 2-D image table; a factory that may build a learned table instead; a
table a script builds and passes to the model's constructor), the same reason in both files; a
relative table handed to a projection in another file is no component; nothing is rewritten.
(The whole-tree rewrite itself: tests/test_rope_across.py.)"""

from __future__ import annotations

from pathlib import Path

from project_support import write_project
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import select_rules

TABLES = '''
    import math

    import numpy as np
    import torch
    import torch.nn as nn


    class WaveTable(nn.Module):
        """Rows of a fixed sin/cos table, one per position."""

        def __init__(self, width, longest=64):
            super().__init__()
            where = torch.arange(longest, dtype=torch.float32)[:, None]
            rates = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
            table = torch.zeros(longest, width)
            table[:, 0::2] = torch.sin(where * rates)
            table[:, 1::2] = torch.cos(where * rates)
            self.register_buffer("table", table)

        def forward(self, ids):
            return self.table[: ids.size(1)]


    class LearnedTable(nn.Module):
        def __init__(self, width, longest=64):
            super().__init__()
            self.rows = nn.Embedding(longest, width)

        def forward(self, ids):
            return self.rows(torch.arange(ids.size(1), device=ids.device))


    def make_positions(width, learned=False):
        if learned:
            return LearnedTable(width)
        return WaveTable(width)



    def fixed_rows(width, longest=64):
        rows = torch.zeros(longest, width)
        for p in range(longest):
            for i in range(0, width, 2):
                rows[p, i] = math.sin(p / math.pow(10000, i / width))
                rows[p, i + 1] = math.cos(p / math.pow(10000, i / width))
        return rows[None]


    class Offsets(nn.Module):
        """Relative offsets from -(n-1) to n-1: a table of distances, not of token positions."""

        def __init__(self, width, longest=64):
            super().__init__()
            where = torch.arange(longest, dtype=torch.float32)[:, None]
            rates = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
            both = torch.cat([torch.sin(where * rates), torch.cos(where * rates)], dim=1)
            self.register_buffer("both", torch.cat([both.flip(0), both[1:]], dim=0)[None])

        def forward(self, x):
            middle = self.both.size(1) // 2
            return self.both[:, middle - x.size(1) + 1: middle + x.size(1)]
'''

GRIDS = '''
    """Image tables: no nn.Module here, only the function a model file calls."""
    import numpy as np


    def grid_table(width, side):
        rows, cols = np.meshgrid(np.arange(side, dtype=np.float64), np.arange(side, dtype=np.float64))

        def half(coords):
            rates = 1.0 / np.power(10000, np.arange(width // 4) / (width / 4))
            angles = coords.reshape(-1)[:, None] * rates[None, :]
            return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

        return np.concatenate([half(rows), half(cols)], axis=1)
'''

MODEL = '''
    import torch
    import torch.nn as nn

    from .grids import grid_table
    from .tables import WaveTable, make_positions


    class Embed(nn.Module):
        def __init__(self, vocab, width):
            super().__init__()
            self.tokens = nn.Embedding(vocab, width)
            self.where = WaveTable(width)

        def forward(self, ids):
            x = self.tokens(ids)
            x += self.where(ids)
            return x


    class Chosen(nn.Module):
        def __init__(self, vocab, width, learned):
            super().__init__()
            self.tokens = nn.Embedding(vocab, width)
            self.where = make_positions(width, learned)

        def forward(self, ids):
            return self.tokens(ids) + self.where(ids)


    class Patches(nn.Module):
        def __init__(self, width, side):
            super().__init__()
            self.proj = nn.Linear(3, width)
            self.grid = nn.Parameter(torch.zeros(1, side * side, width), requires_grad=False)
            self.grid.data.copy_(torch.from_numpy(grid_table(width, side)).float().unsqueeze(0))

        def forward(self, patches):
            return self.proj(patches) + self.grid


    class Stack(nn.Module):
        def __init__(self, vocab, width, rows):
            super().__init__()
            self.tokens = nn.Embedding(vocab, width)
            self.rows = rows

        def forward(self, ids):
            return self.tokens(ids) + self.rows[:, : ids.size(1)].to(ids.device)


    class Translator(nn.Module):
        def __init__(self, vocab, width, rows):
            super().__init__()
            self.source = Stack(vocab, width, rows=rows)
'''

SCRIPT = '''
    from pkg.model import Translator
    from pkg.tables import fixed_rows

    rows = fixed_rows(16)
    model = Translator(100, 16, rows)
'''

ATTENTION = '''
    import torch
    import torch.nn as nn

    from .tables import Offsets


    class RelativeAttention(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.offsets = Offsets(width)
            self.qkv = nn.Linear(width, 3 * width)
            self.rel = nn.Linear(width, width)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            r = self.rel(self.offsets(x))
            scores = q @ k.transpose(-2, -1) + (q @ r.transpose(-2, -1))[..., : x.size(1)]
            return scores.softmax(-1) @ v
'''


def _run(tmp_path: Path):
    project = write_project(tmp_path, {"pkg/__init__.py": "", "pkg/tables.py": TABLES, "pkg/model.py": MODEL,
                                       "pkg/attention.py": ATTENTION, "pkg/grids.py": GRIDS,
                                       "train.py": SCRIPT})
    results = {}
    for name in ("tables", "model", "attention", "grids"):
        path = tmp_path / "pkg" / f"{name}.py"
        results[name] = migrate_source(path.read_text(), str(path), [r() for r in select_rules(["TFM401"])],
                                       project)
        assert not results[name].errors, results[name].errors
    return results


def _line(text: str, fragment: str) -> int:
    from textwrap import dedent

    return next(n for n, line in enumerate(dedent(text).splitlines(), 1) if fragment in line)


def test_tables_added_in_another_file_are_refused_with_their_reason(tmp_path: Path) -> None:
    results = _run(tmp_path)
    for result in results.values():
        assert result.migrated == result.original and not result.edits
    model = {c.start_line: c for c in results["model"].components}
    added = _line(MODEL, "x += self.where(ids)")
    chosen = _line(MODEL, "return self.tokens(ids) + self.where(ids)")
    patches = _line(MODEL, "return self.proj(patches) + self.grid")
    passed = _line(MODEL, "return self.tokens(ids) + self.rows[:, : ids.size(1)].to(ids.device)")
    assert sorted(model) == [added, chosen, patches, passed]
    assert all(c.outcome == "refused" for c in model.values())
    sin = _line(TABLES, "table[:, 0::2] = torch.sin(where * rates)")
    assert "`Embed` adds the positions but runs no attention, and nothing in the run builds it" \
        in model[added].reason
    assert "`make_positions` builds either the sinusoidal `WaveTable`" in model[chosen].reason
    assert "`LearnedTable`, a trained table" in model[chosen].reason
    assert "2-D image position table" in model[patches].reason and "grid_table" in model[patches].reason
    filled = _line(TABLES, "rows[p, i] = math.sin(p / math.pow(10000, i / width))")
    assert (f"the constructor argument `rows` of `Translator`, filled by `fixed_rows` (pkg/tables.py, line "
            f"{filled}) in train.py (line {_line(SCRIPT, 'model = Translator(100, 16, rows)')})") \
        in model[passed].reason


def test_the_table_file_names_where_the_table_is_added(tmp_path: Path) -> None:
    results = _run(tmp_path)
    tables = {c.start_line: c for c in results["tables"].components}
    sin = _line(TABLES, "table[:, 0::2] = torch.sin(where * rates)")
    assert sorted(tables) == [sin]
    added = _line(MODEL, "x += self.where(ids)")
    assert tables[sin].outcome == "refused"
    assert tables[sin].reason == f"line {sin}: " + next(
        c.reason for c in results["model"].components if c.start_line == added).split(": ", 1)[1]
    grids = results["grids"].components  # a file without nn.Module classes is still read
    grid = _line(GRIDS, "return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)")
    assert [(c.start_line, c.outcome) for c in grids] == [(grid, "refused")]
    assert "2-D image position table" in grids[0].reason


def test_a_relative_table_handed_to_a_projection_is_no_component(tmp_path: Path) -> None:
    results = _run(tmp_path)
    assert not results["attention"].components and not results["attention"].refusals
    offsets = _line(TABLES, "class Offsets")
    assert all(c.start_line < offsets for c in results["tables"].components)


def test_the_command_line_reads_the_module_less_table_file(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from tf_migrate.cli import main

    write_project(tmp_path, {"pkg/__init__.py": "", "pkg/tables.py": TABLES, "pkg/model.py": MODEL,
                             "pkg/grids.py": GRIDS})
    run = CliRunner().invoke(main, [str(tmp_path / "pkg"), "--select", "TFM401", "--format", "json", "--no-cache"])
    document = json.loads(run.output)
    assert all(not f["errors"] for f in document["files"]), document["files"]
    grids = next(f for f in document["files"] if f["path"].endswith("grids.py"))
    assert [r["line"] for r in grids["refusals"]] == [_line(GRIDS, "return np.concatenate([np.sin(angles)")]


def test_positions_of_a_model_refused_elsewhere_point_to_that_refusal() -> None:
    from helpers import MODELS

    path = MODELS / "torch_builtin.py"
    result = migrate_source(path.read_text(), str(path), [r() for r in select_rules(["TFM401"])])
    [component] = result.components
    assert component.outcome == "refused"
    assert "these positions belong to the model refused at line" in component.reason
    assert "built-in `torch.nn.TransformerEncoderLayer`" in component.reason
