"""`tf-migrate check` like `ruff check`: --diff/--fix/--unsafe-fixes, stdin, exit codes, config holes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import FIXTURES
from tf_migrate.cli import main

LEGACY = FIXTURES / "sdpa" / "mingpt_tril_buffer.before.py"
MIGRATED = FIXTURES / "sdpa" / "mingpt_tril_buffer.after.py"
REFUSED = FIXTURES / "sdpa" / "returns_probs.noop.py"
PRENORM = next((FIXTURES / "prenorm").glob("*.before.py"))


def run(*args, cwd: Path | None = None, input: bytes | None = None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args], input=input)
    finally:
        os.chdir(old)


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    shutil.copy(LEGACY, tmp_path / "gpt.py")
    return tmp_path / "gpt.py"


def test_check_reports_diffs_and_fixes(legacy: Path) -> None:
    before = legacy.read_text()
    report = run("check", legacy, "--no-cache")
    assert report.exit_code == 1 and "TFM101" in report.stdout and legacy.read_text() == before
    diff = run("check", "--diff", legacy, "--no-cache")
    assert diff.exit_code == 1 and "+++ b/" in diff.stdout and legacy.read_text() == before
    fixed = run("check", "--fix", legacy, "--no-cache")
    assert fixed.exit_code == 0, fixed.output  # like ruff: everything found was fixed
    assert legacy.read_text() == MIGRATED.read_text()
    assert run("check", legacy, "--no-cache").exit_code == 0


def test_check_fix_can_exit_non_zero_and_the_old_spelling_still_does(legacy: Path, tmp_path: Path) -> None:
    assert run("check", "--fix", "--exit-non-zero-on-fix", legacy, "--no-cache").exit_code == 1
    shutil.copy(LEGACY, legacy)
    assert run(legacy, "--write", "--no-cache").exit_code == 1  # `tf-migrate PATH --write`: unchanged
    shutil.copy(LEGACY, legacy)
    assert run("migrate", legacy, "--write", "--no-cache").exit_code == 1


@pytest.mark.parametrize("extra", [["--fix"], ["--output-dir", "out"]])
def test_diff_never_writes(legacy: Path, extra: list[str]) -> None:
    before = legacy.read_text()
    result = run("check", "--diff", legacy, *extra, "--no-cache", cwd=legacy.parent)
    assert result.exit_code == 2 and "--diff" in result.output
    assert legacy.read_text() == before and not (legacy.parent / "out").exists()
    assert run(legacy, "--diff", "--write", "--no-cache").exit_code == 2


def test_fix_applies_only_exact_rules_without_unsafe_fixes(tmp_path: Path) -> None:
    shutil.copy(PRENORM, tmp_path / "block.py")
    before = (tmp_path / "block.py").read_text()
    safe = run("check", "--fix", "--select", "TFM201", tmp_path / "block.py", "--no-cache")
    assert safe.exit_code == 0 and "--unsafe-fixes" in safe.output
    assert (tmp_path / "block.py").read_text() == before
    unsafe = run("check", "--fix", "--unsafe-fixes", "--select", "TFM201", tmp_path / "block.py", "--no-cache")
    assert unsafe.exit_code == 0 and (tmp_path / "block.py").read_text() != before


def test_stdin_round_trip(tmp_path: Path) -> None:
    raw = LEGACY.read_bytes()
    fixed = run("check", "--fix", "-", "--stdin-filename", "models/gpt.py", input=raw, cwd=tmp_path)
    assert fixed.exit_code == 0, fixed.output
    assert fixed.stdout_bytes == MIGRATED.read_bytes()
    assert "models/gpt.py:" in fixed.stderr and "TFM101" in fixed.stderr
    again = run("check", "--fix", "-", input=fixed.stdout_bytes, cwd=tmp_path)
    assert again.exit_code == 0 and again.stdout_bytes == MIGRATED.read_bytes()
    report = run("check", "-", "--stdin-filename", "gpt.py", input=raw, cwd=tmp_path)
    assert report.exit_code == 1 and report.stdout.startswith("gpt.py:")
    diff = run("check", "--diff", "-", input=raw, cwd=tmp_path)
    assert diff.exit_code == 1 and "+++ b/-" in diff.stdout
    assert not list(tmp_path.iterdir()) or all(p.name == ".tf-migrate-cache" for p in tmp_path.iterdir())


def test_stdin_keeps_a_broken_file_and_uses_the_named_files_config(tmp_path: Path) -> None:
    broken = b"def f(:\n"
    result = run("check", "--fix", "-", input=broken, cwd=tmp_path)
    assert result.exit_code == 2 and result.stdout_bytes == broken and "syntax error" in result.stderr
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "pyproject.toml").write_text('[tool.tf-migrate]\nignore = ["TFM101"]\n')
    ignored = run("check", "-", "--stdin-filename", "pkg/gpt.py", input=LEGACY.read_bytes(), cwd=tmp_path)
    assert ignored.exit_code == 0
    excluded = tmp_path / "pyproject.toml"
    excluded.write_text('[tool.tf-migrate]\nexclude = ["vendor/"]\n')
    out = run("check", "--fix", "-", "--stdin-filename", "vendor/gpt.py", "--force-exclude",
              input=LEGACY.read_bytes(), cwd=tmp_path)
    assert out.exit_code == 0 and out.stdout_bytes == LEGACY.read_bytes()


def test_refusals_exit_0_unless_asked(tmp_path: Path) -> None:
    shutil.copy(REFUSED, tmp_path / "probs.py")
    plain = run("check", tmp_path / "probs.py", "--no-cache")
    assert plain.exit_code == 0 and "refused" in plain.stdout
    assert run("check", tmp_path / "probs.py", "--no-cache", "--exit-non-zero-on-refusal").exit_code == 1


def test_not_understood_components_count_as_refusals_for_the_exit_code(tmp_path: Path) -> None:
    """A census component the matcher did not understand is a candidate left unhandled too."""
    shutil.copy(FIXTURES / "swiglu" / "tanh_and_lookalikes.census.py", tmp_path / "table.py")
    plain = run("check", tmp_path / "table.py", "--select", "TFM301", "--no-cache")
    assert plain.exit_code == 0 and "TFM301 not understood" in plain.stdout and "refused:" not in plain.stdout
    strict = run("check", tmp_path / "table.py", "--select", "TFM301", "--no-cache", "--exit-non-zero-on-refusal")
    assert strict.exit_code == 1


def test_exit_zero(legacy: Path, tmp_path: Path) -> None:
    assert run("check", legacy, "--exit-zero", "--no-cache").exit_code == 0
    (tmp_path / "bad.py").write_text("def f(:\n")
    assert run("check", tmp_path / "bad.py", "--exit-zero", "--no-cache").exit_code == 2


def test_a_file_without_trigger_words_that_does_not_parse_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def f(:\n    return 1\n")
    (tmp_path / "good.py").write_text("def f():\n    return 1\n")
    for extra in (["--no-cache"], [], []):  # the second and third runs use the syntax verdict cache
        result = run("check", tmp_path, *extra, cwd=tmp_path)
        assert result.exit_code == 2 and "bad.py: error: syntax error at line 1" in result.output


def test_subcommand_names_win_over_paths_with_a_note(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    shutil.copy(LEGACY, tmp_path / "rules" / "gpt.py")
    table = run("rules", cwd=tmp_path)
    assert table.exit_code == 0 and "TFM101" in table.stdout and "tf-migrate check rules" in table.stderr
    assert run("check", "rules", "--no-cache", cwd=tmp_path).exit_code == 1
    assert run("./rules", "--no-cache", cwd=tmp_path).exit_code == 1


# Issue 18, item 10: configuration holes.

def test_config_may_be_any_toml_with_the_table_or_a_tf_migrate_toml(legacy: Path, tmp_path: Path) -> None:
    (tmp_path / "team.toml").write_text('[tool.tf-migrate]\nignore = ["TFM101"]\n')
    assert run(legacy, "--config", tmp_path / "team.toml", "--no-cache").exit_code == 0
    (tmp_path / "tf-migrate.toml").write_text('ignore = ["TFM101"]\n')
    assert run(legacy, "--config", tmp_path / "tf-migrate.toml", "--no-cache").exit_code == 0
    (tmp_path / "other.toml").write_text('[tool.black]\nline-length = 1\n')
    missing_table = run(legacy, "--config", tmp_path / "other.toml", "--no-cache")
    assert missing_table.exit_code == 2 and "no [tool.tf-migrate] table" in missing_table.output
    missing = run(legacy, "--config", tmp_path / "nope.toml", "--no-cache")
    assert missing.exit_code == 2 and "no such file" in missing.output


@pytest.mark.parametrize("args, message", [
    (["--option", "swiglu.ffn=nonsense"], "nonsense"),  # swiglu is not selected (default: exact)
    (["--option", "rope.base=-1"], "base"),
    (["--option", "rope.base=nan"], "base"),
    (["--option", "rope.positions=spiral"], "spiral"),
    (["--select", ","], "--select"),
    (["--ignore", " , "], "--ignore"),
])
def test_bad_selections_and_option_values_are_usage_errors(legacy: Path, args, message) -> None:
    result = run(legacy, *args, "--no-cache")
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("table, message", [
    ("select = []", "select is empty"),
    ("[tool.tf-migrate.rope]\nbase = 0", "base"),
    ("exclude = 3", "exclude"),
    ("selct = ['TFM101']", "unknown key"),
])
def test_bad_configuration_is_a_usage_error(legacy: Path, table: str, message: str) -> None:
    text = table if table.startswith("[") else "[tool.tf-migrate]\n" + table
    (legacy.parent / "pyproject.toml").write_text(text + "\n")
    result = run(legacy, "--no-cache")
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("text", ["tool = 3\n", "[tool]\ntf-migrate = 'x'\n"])
def test_misshapen_tool_tables_are_usage_errors(legacy: Path, text: str) -> None:
    (legacy.parent / "pyproject.toml").write_text(text)
    result = run(legacy, "--no-cache")
    assert result.exit_code == 2 and "must be a table" in result.output and "Traceback" not in result.output
