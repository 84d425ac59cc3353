"""A file that defines no nn.Module class is handed to a rule with `outside_modules` names only when
it calls a function or method of one of those names (engine/file.py): TFM401 looks there for a
table function another file's model calls, which calls `sin`. The name in a comment, a string or
inside another name (`asin(`) is no call, and such a file is not parsed for the rule at all."""

from __future__ import annotations

import textwrap

import pytest

from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import select_rules
from tf_migrate.engine.ruleindex import rule_index


class _Probe:
    """A rule-shaped object (not a registered Rule) that records the files it is asked about."""

    code = "TFM999"
    triggers = ("sin", "pos")
    outside_modules = ("sin", "sin_")
    free_functions = False

    def __init__(self) -> None:
        self.checked: list[str] = []

    def check(self, ctx):
        self.checked.append(ctx.path)
        return iter(())

    def census(self, ctx):
        return ()


CALLED = {
    "function": "import torch\n\ndef table(n):\n    return torch.sin(torch.arange(n))\n",
    "method": "def table(rows):\n    return rows.sin()\n",
    "in place": "def fill(rows):\n    rows.sin_()\n",
    "bare name": "from math import sin\n\nROWS = [sin(p) for p in range(8)]\n",
    "with a space": "import math\n\nROW = math.sin (0.5)\n",
    # a long s, which Python's NFKC makes `sin`; the file reaches the rule through another trigger
    "non-ASCII spelling": "import math\n\npos = math.\u017fin(0.5)\n",
}

NOT_CALLED = {
    "comment": "# rows = torch.sin(positions)\nROWS = 3\n",
    "string": "KERNEL = 'out = tl.sin(x)'\n",
    "another name": "import math\n\nANGLE = math.asin(0.5)\n",
    "a reference only": "import torch\n\nWAVE = torch.sin\n",
}


@pytest.mark.parametrize("source", CALLED.values(), ids=list(CALLED))
def test_a_file_calling_the_name_is_handed_to_the_rule(tmp_path, source):
    probe = _Probe()
    path = str(tmp_path / "tables.py")
    migrate_source(source, path, [probe])
    assert probe.checked == [path]


@pytest.mark.parametrize("source", NOT_CALLED.values(), ids=list(NOT_CALLED))
def test_a_file_only_spelling_the_name_is_not(tmp_path, source):
    probe = _Probe()
    result = migrate_source(source, str(tmp_path / "tables.py"), [probe])
    assert probe.checked == []
    assert not result.errors


def test_a_module_file_is_handed_to_the_rule_whatever_it_calls(tmp_path):
    probe = _Probe()
    path = str(tmp_path / "model.py")
    migrate_source("import torch.nn as nn\n\n# sin\nclass Block(nn.Module):\n    pass\n", path, [probe])
    assert probe.checked == [path]


def test_rope_names_sin_and_its_in_place_form():
    assert {info.code: info.outside_modules for info in rule_index()}["TFM401"] == ("sin", "sin_")


def test_rope_reports_a_table_function_of_a_file_without_modules(tmp_path):
    """The path the names open stays open: the table built by a function another file's model adds
    is a component of the function's own file."""
    (tmp_path / "tables.py").write_text(textwrap.dedent('''
        import math

        import torch


        def sinusoid(length, width):
            where = torch.arange(length, dtype=torch.float32)[:, None]
            rates = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
            rows = torch.zeros(length, width)
            rows[:, 0::2] = torch.sin(where * rates)
            rows[:, 1::2] = torch.cos(where * rates)
            return rows
    '''))
    (tmp_path / "model.py").write_text(textwrap.dedent('''
        import torch.nn as nn

        from tables import sinusoid


        class Encoder(nn.Module):
            def __init__(self, vocab, width):
                super().__init__()
                self.embed = nn.Embedding(vocab, width)
                self.register_buffer("pos_rows", sinusoid(512, width))

            def forward(self, ids):
                return self.embed(ids) + self.pos_rows[: ids.size(1)]
    '''))
    from tf_migrate.analysis.project import ProjectIndex

    project = ProjectIndex.for_files([tmp_path / "tables.py", tmp_path / "model.py"])
    rules = [rule() for rule in select_rules(["TFM401"])]
    path = str(tmp_path / "tables.py")
    result = migrate_source((tmp_path / "tables.py").read_text(), path, rules, project)
    assert not result.errors
    assert [(c.rule, c.cls, c.outcome) for c in result.components] == [("TFM401", "sinusoid", "refused")]
