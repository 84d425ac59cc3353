"""The engine's pre-check skips files that cannot define an nn.Module; TFM101 also reads free
functions, so a file with top-level functions and no module class still reaches it (and only it)."""

from __future__ import annotations

import textwrap

from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import select_rules
from tf_migrate.engine.ruleindex import rule_index

ATTENTION = textwrap.dedent('''
    import torch


    def attend(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1) / q.size(-1) ** 0.5, dim=-1)
        return w @ v
''')


def test_the_rule_index_reads_free_functions_without_importing_the_rule() -> None:
    flags = {info.code: info.free_functions for info in rule_index()}
    assert flags["TFM101"] is True
    assert not any(flag for code, flag in flags.items() if code != "TFM101")


def test_a_file_of_functions_without_a_module_class_is_read_by_tfm101() -> None:
    result = migrate_source(ATTENTION, "util.py", [rule() for rule in select_rules(["all"])])
    assert not result.errors
    assert [e.code for e in result.edits] == ["TFM101"]
    assert "F.scaled_dot_product_attention(q, k, v)" in result.migrated


def test_a_file_without_functions_or_module_classes_is_still_skipped() -> None:
    text = "import torch\nprobs = torch.softmax(torch.randn(3) @ torch.randn(3, 4), dim=-1) @ torch.randn(4, 2)\n"
    result = migrate_source(text, "script.py", [rule() for rule in select_rules(["all"])])
    assert result.components == [] and result.edits == [] and result.refusals == []
