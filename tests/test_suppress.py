"""Suppression comments: by code or name, for a whole file, and the ones that turn off nothing."""

from __future__ import annotations

import pytest

from helpers import FIXTURES
from tf_migrate.engine.config import Config
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.run import build_rules

LEGACY = (FIXTURES / "sdpa" / "mingpt_tril_buffer.before.py").read_text()
CLASS_LINE = "class CausalSelfAttention(nn.Module):"


def _migrate(text: str, select=("exact",)):
    return migrate_source(text, "m.py", build_rules(Config(select=list(select))))


@pytest.mark.parametrize("comment", ["skip", "skip[TFM101]", "skip[sdpa]", "skip[TFM1]", "skip[SDPA, TFM2]"])
def test_a_class_skip_by_code_prefix_or_name(comment: str) -> None:
    result = _migrate(LEGACY.replace(CLASS_LINE, f"{CLASS_LINE}  # tf-migrate: {comment}"))
    assert not result.changed and not result.edits and not result.warnings


@pytest.mark.parametrize("comment", ["# tf-migrate: skip-file", "# tf-migrate: skip-file[sdpa]"])
def test_skip_file_anywhere_turns_the_rules_off_for_the_file(comment: str) -> None:
    result = _migrate(LEGACY + f"\n{comment}\n")
    assert not result.changed and not result.edits


def test_skip_file_for_another_rule_leaves_this_one_on() -> None:
    assert _migrate(LEGACY + "\n# tf-migrate: skip-file[fused-qkv]\n").changed


def test_skip_naming_another_rule_does_not_suppress() -> None:
    assert _migrate(LEGACY.replace(CLASS_LINE, f"{CLASS_LINE}  # tf-migrate: skip[swiglu]")).changed


def test_unused_suppression_is_reported_at_its_line_and_column() -> None:
    text = LEGACY.replace("import torch\n", "import torch  # tf-migrate: skip[TFM101]\n", 1)
    result = _migrate(text)
    assert result.changed
    line = text.splitlines().index("import torch  # tf-migrate: skip[TFM101]") + 1
    assert [(w.code, w.line, w.column) for w in result.warnings] == [("TFM001", line, 1)]
    assert "unused suppression" in result.warnings[0].message and "TFM101" in result.warnings[0].message


def test_a_skip_for_a_rule_not_run_is_not_called_unused() -> None:
    text = LEGACY.replace("import torch\n", "import torch  # tf-migrate: skip[TFM301]\n", 1)  # has `Linear`
    assert not _migrate(text).warnings  # TFM301 is not selected: it may need the comment another day
    assert _migrate(text, ["TFM101", "TFM301"]).warnings  # it ran and found nothing to skip


def test_a_skip_for_a_rule_that_cannot_act_on_the_file_is_unused() -> None:
    text = LEGACY.replace(CLASS_LINE, f"{CLASS_LINE}  # tf-migrate: skip[TFM201]")  # no norm in the file
    assert "no rule it names can act on this file" in _migrate(text).warnings[0].message


def test_unknown_rule_in_a_suppression_is_reported() -> None:
    result = _migrate(LEGACY.replace(CLASS_LINE, f"{CLASS_LINE}  # tf-migrate: skip[flash]"))
    assert result.changed and "names no rule: flash" in result.warnings[0].message


def test_the_suppression_warning_reaches_the_text_report(tmp_path) -> None:
    from click.testing import CliRunner
    from tf_migrate.cli import main

    (tmp_path / "m.py").write_text(LEGACY.replace("import torch\n", "import torch  # tf-migrate: skip[sdpa]\n", 1))
    output = CliRunner().invoke(main, [str(tmp_path / "m.py"), "--no-cache"]).stdout
    assert "TFM001 warning: unused suppression" in output
