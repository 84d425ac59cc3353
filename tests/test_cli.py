"""The command line: modes, selection, formats, exit codes, config, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import FIXTURES
from tf_migrate.cli import main

LEGACY = FIXTURES / "sdpa" / "mingpt_tril_buffer.before.py"
MODERN = FIXTURES / "sdpa" / "already_sdpa.noop.py"


def run(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(main, [str(a) for a in args])
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    shutil.copy(LEGACY, tmp_path / "src" / "gpt.py")
    shutil.copy(MODERN, tmp_path / "src" / "modern.py")
    return tmp_path


def test_report_mode_exits_1_and_writes_nothing(project: Path) -> None:
    before = (project / "src" / "gpt.py").read_text()
    result = run(project / "src")
    assert result.exit_code == 1
    assert "TFM101" in result.output
    assert (project / "src" / "gpt.py").read_text() == before


def test_nothing_to_change_exits_0(project: Path) -> None:
    assert run(project / "src" / "modern.py").exit_code == 0


def test_diff_prints_a_unified_diff(project: Path) -> None:
    result = run(project / "src", "--diff")
    assert result.exit_code == 1
    assert "+++ b/" in result.output and "scaled_dot_product_attention" in result.output


def test_write_applies_atomically_and_keeps_permissions(project: Path) -> None:
    target = project / "src" / "gpt.py"
    target.chmod(0o640)
    assert run(project / "src", "--write").exit_code == 1
    assert "scaled_dot_product_attention" in target.read_text()
    assert (target.stat().st_mode & 0o777) == 0o640
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    assert run(project / "src").exit_code == 0  # second run: nothing left to change


def test_output_dir_mirrors_every_file(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (project / "src" / "pkg").mkdir()
    (project / "src" / "pkg" / "empty.py").write_text("")
    original = (project / "src" / "gpt.py").read_text()
    assert run(project / "src", "--output-dir", out).exit_code == 1
    assert (project / "src" / "gpt.py").read_text() == original
    assert "scaled_dot_product_attention" in (out / "gpt.py").read_text()
    assert (out / "modern.py").read_bytes() == (project / "src" / "modern.py").read_bytes()
    assert (out / "pkg" / "empty.py").exists()


def test_json_document_and_plan(project: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    result = run(project / "src", "--format", "json", "--plan", plan)
    document = json.loads(result.output)
    files = {Path(f["path"]).name: f for f in document["files"]}
    assert files["gpt.py"]["changed"] and files["gpt.py"]["edits"][0]["code"] == "TFM101"
    assert set(files["gpt.py"]) == {"path", "changed", "edits", "refusals", "notes", "errors", "warnings"}
    classes = json.loads(plan.read_text())["classes"]
    assert classes == document["plan"]["classes"]
    assert classes[0]["class"] == "CausalSelfAttention" and classes[0]["dropped"] == ["bias"]


def test_refusals_carry_line_and_reason(tmp_path: Path) -> None:
    result = run(FIXTURES / "sdpa" / "returns_probs.noop.py", "--format", "json")
    refusal = json.loads(result.output)["files"][0]["refusals"][0]
    assert refusal["code"] == "TFM101" and refusal["line"] > 0 and "returned" in refusal["reason"]
    assert result.exit_code == 0


@pytest.mark.parametrize("selector", ["TFM101", "TFM1", "sdpa", "exact", "all"])
def test_select_forms(project: Path, selector: str) -> None:
    assert run(project / "src", "--select", selector).exit_code == 1


@pytest.mark.parametrize("selector", ["TFM101", "sdpa", "exact"])
def test_ignore_forms(project: Path, selector: str) -> None:
    assert run(project / "src", "--ignore", selector).exit_code == 0


def test_unknown_selector_is_a_usage_error(project: Path) -> None:
    result = run(project / "src", "--select", "TFM999")
    assert result.exit_code == 2 and "TFM999" in result.output


def test_bad_option_is_exit_2(project: Path) -> None:
    assert run(project / "src", "--format", "yaml").exit_code == 2


def test_config_from_nearest_pyproject(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.tf-migrate]\nignore = ["TFM101"]\n')
    assert run(project / "src").exit_code == 0
    assert run(project / "src", "--select", "TFM101").exit_code == 1  # the command line wins over select
    (project / "pyproject.toml").write_text('[tool.tf-migrate]\nexclude = ["gpt.py"]\n')
    assert run(project / "src").exit_code == 0


def test_skipped_folders(project: Path) -> None:
    for folder in (".git", "build", ".venv", "node_modules"):
        (project / "src" / folder).mkdir()
        shutil.copy(LEGACY, project / "src" / folder / "gpt.py")
    (project / "src" / "gpt.py").unlink()
    assert run(project / "src").exit_code == 0


def test_rules_and_explain() -> None:
    assert "TFM101" in run("rules").output
    explained = run("explain", "TFM101")
    assert explained.exit_code == 0 and "Before:" in explained.output and "is_causal" in explained.output
    assert run("explain", "sdpa").exit_code == 0
    assert run("explain", "TFM999").exit_code == 2


# --- bad input: a clear error, exit 2, the other files still processed, nothing damaged ---

@pytest.mark.parametrize("content,message", [
    (b"def f(:\n    return x.softmax(-1)\n", "syntax error"),
    (b"x = '\xff\xfe'\n", "not valid utf-8"),
])
def test_bad_files(project: Path, content: bytes, message: str) -> None:
    bad = project / "src" / "bad.py"
    bad.write_bytes(content)
    result = run(project / "src", "--write")
    assert result.exit_code == 2
    assert message in result.output
    assert bad.read_bytes() == content
    assert "scaled_dot_product_attention" in (project / "src" / "gpt.py").read_text()


def test_missing_path(tmp_path: Path) -> None:
    result = run(tmp_path / "nope.py")
    assert result.exit_code == 2 and "no such file" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(project: Path) -> None:
    target = project / "src" / "gpt.py"
    target.chmod(0)
    assert run(target).exit_code == 2


def test_empty_file_and_directory_named_py(project: Path) -> None:
    (project / "src" / "empty.py").write_text("")
    assert run(project / "src" / "empty.py").exit_code == 0
    (project / "src" / "folder.py").mkdir()
    assert run(project / "src" / "modern.py").exit_code == 0
    result = run(project / "src" / "folder.py" / "..", "--select", "TFM101")
    assert result.exit_code == 1  # walking a tree: the folder named like a .py file is not read as one


def test_latin1_declared_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "old.py"
    text = LEGACY.read_text().replace("# expect:", "# -*- coding: latin-1 -*-\n# caf\xe9", 1)
    path.write_bytes(text.encode("latin-1"))
    assert run(path, "--write").exit_code == 1
    assert "caf\xe9" in path.read_bytes().decode("latin-1")


def test_rule_crash_leaves_file_untouched(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tf_migrate.rules.sdpa import EinsumAttentionToSdpa

    def boom(self, ctx):
        raise RuntimeError("rule bug")
        yield

    monkeypatch.setattr(EinsumAttentionToSdpa, "check", boom)
    before = (project / "src" / "gpt.py").read_text()
    result = run(project / "src", "--write")
    assert result.exit_code == 2 and "internal error in TFM101" in result.output
    assert (project / "src" / "gpt.py").read_text() == before


def test_rewrite_run_does_not_import_torch(project: Path) -> None:
    code = ("import sys; from tf_migrate.cli import main\n"
            "try:\n    main([sys.argv[1], '--diff'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code, str(project / "src")],
                          capture_output=True, text=True)
    assert done.stdout.strip().endswith("ok"), done.stderr


# --- bytes the tool must not damage, and writes it must get right ---

def _legacy_variant(path: Path, transform) -> bytes:
    data = transform(LEGACY.read_bytes())
    path.write_bytes(data)
    return data


def test_bytes_libcst_cannot_reproduce_are_an_error_not_a_loss(tmp_path: Path) -> None:
    # A form feed in an indentation and `\r`-only line ends: libcst's printing drops them.
    ff = _legacy_variant(tmp_path / "ff.py", lambda b: b.replace(b"        return", b"\x0c        return", 1))
    cr = _legacy_variant(tmp_path / "cr.py", lambda b: b.replace(b"\n", b"\r"))
    result = run(tmp_path, "--write")
    assert result.exit_code == 2 and result.output.count("byte for byte") == 2, result.output
    assert (tmp_path / "ff.py").read_bytes() == ff and (tmp_path / "cr.py").read_bytes() == cr


def test_null_byte_is_named_not_blamed_on_the_rewrite(tmp_path: Path) -> None:
    _legacy_variant(tmp_path / "nul.py", lambda b: b.replace(b"import", b"# \x00\nimport", 1))
    result = run(tmp_path / "nul.py")
    assert result.exit_code == 2 and "null byte" in result.output and "rewrite" not in result.output


@pytest.mark.parametrize("transform", [
    lambda b: b.replace(b"\n", b"\r\n"),
    lambda b: b"\xef\xbb\xbf" + b,
    lambda b: b.replace(b"\n", b"\r\n").rstrip(b"\r\n"),
], ids=["crlf", "bom", "crlf-no-final-newline"])
def test_line_ends_and_bom_survive_a_rewrite(tmp_path: Path, transform) -> None:
    data = _legacy_variant(tmp_path / "m.py", transform)
    assert run(tmp_path / "m.py", "--write").exit_code == 1
    written = (tmp_path / "m.py").read_bytes()
    assert b"scaled_dot_product_attention" in written
    assert written.startswith(b"\xef\xbb\xbf") == data.startswith(b"\xef\xbb\xbf")
    assert (b"\r\n" in data) == (b"\n" in written and b"\n" not in written.replace(b"\r\n", b""))
    assert written.endswith(b"\n") == data.endswith(b"\n")


def test_diff_of_a_file_without_final_newline_or_with_a_form_feed_applies(tmp_path: Path) -> None:
    _legacy_variant(tmp_path / "a.py", lambda b: b.rstrip(b"\n"))
    _legacy_variant(tmp_path / "b.py", lambda b: b.replace(b"\nclass ", b"\n\x0c\nclass ", 1))
    result = run("a.py", "b.py", "--diff", "--no-cache", cwd=tmp_path)
    assert result.exit_code == 1 and "\\ No newline at end of file\n" in result.stdout
    (tmp_path / "d.patch").write_text(result.stdout)
    subprocess.run(["git", "apply", "d.patch"], cwd=tmp_path, check=True)
    assert run("a.py", "b.py", "--no-cache", cwd=tmp_path).exit_code == 0  # the patch is the rewrite


def test_write_goes_through_symlinks_and_refuses_read_only_files(project: Path) -> None:
    real = project / "src" / "gpt.py"
    (project / "links").mkdir()
    (project / "links" / "gpt.py").symlink_to(real)
    shutil.copy(LEGACY, project / "src" / "locked.py")
    (project / "src" / "locked.py").chmod(0o444)
    result = run(project / "links", project / "src", "--write", "--no-cache")
    assert result.exit_code == 2 and "read-only" in result.output
    assert (project / "links" / "gpt.py").is_symlink()
    assert "scaled_dot_product_attention" in real.read_text()
    assert (project / "src" / "locked.py").read_text() == LEGACY.read_text()
    assert result.output.count("gpt.py:") == 1  # the link and its target: one file


def test_same_file_twice_is_one_file(project: Path) -> None:
    gpt = project / "src" / "gpt.py"
    result = run(gpt, project / "src", gpt, "--no-cache", "--format", "json")
    paths = [entry["path"] for entry in json.loads(result.stdout)["files"]]
    assert paths == [str(gpt), str(project / "src" / "modern.py")]


def test_output_dir_never_overwrites_or_rereads_inputs(project: Path) -> None:
    before = (project / "src" / "gpt.py").read_text()
    result = run(project / "src", "--output-dir", project / "src", "--no-cache")
    assert result.exit_code == 2 and "--write" in result.output
    assert (project / "src" / "gpt.py").read_text() == before
    for _ in range(2):  # the second run must not pick up the first run's copies as inputs
        result = run(project / "src", "--output-dir", project / "src" / "out", "--no-cache")
        assert result.exit_code == 1 and "out/" not in result.output, result.output
    assert (project / "src" / "out" / "gpt.py").is_file()


def test_rule_option_by_code_is_applied(tmp_path: Path) -> None:
    ffn = next((FIXTURES / "swiglu").glob("*.before.py"))
    by_name = run(ffn, "--select", "TFM301", "--option", "swiglu.ffn=geglu", "--diff", "--no-cache")
    by_code = run(ffn, "--select", "TFM301", "--option", "TFM301.ffn=geglu", "--diff", "--no-cache")
    assert "gelu" in by_name.stdout and by_code.stdout == by_name.stdout


def test_bad_option_value_is_one_usage_error_even_without_candidates(project: Path) -> None:
    result = run(project / "src" / "modern.py", "--select", "all", "--option", "swiglu.ffn=nonsense")
    assert result.exit_code == 2 and "nonsense" in result.output and "internal error" not in result.output


@pytest.mark.parametrize("tail", ["x = " + "(" * 300 + "1" + ")" * 300, "x = 1" + " + 1" * 10000],
                         ids=["nested-parens", "long-chain"])
def test_source_too_deep_for_python_is_an_error_not_a_crash(project: Path, tail: str) -> None:
    # libcst's native parser dies with SIGSEGV on these: it must never see them.
    (project / "src" / "deep.py").write_text(LEGACY.read_text() + tail + "\n")
    result = run(project / "src" / "deep.py", project / "src" / "gpt.py", "--no-cache")
    assert result.exit_code == 2, result.output
    assert "deep.py: error:" in result.output and "internal error" not in result.output
    assert "gpt.py:" in result.output


def test_unwritable_plan_is_a_clear_error(project: Path) -> None:
    (project / "afile").write_text("")
    result = run(project / "src", "--plan", project / "afile" / "plan.json", "--no-cache")
    assert result.exit_code == 2 and "--plan" in result.output and "Traceback" not in result.output


def test_output_dir_mirrors_a_symlink_pointing_outside_the_tree(project: Path) -> None:
    (project / "elsewhere").mkdir()
    shutil.copy(LEGACY, project / "elsewhere" / "x.py")
    (project / "src" / "link.py").symlink_to(project / "elsewhere" / "x.py")
    result = run(project / "src", "--output-dir", project / "out", "--no-cache")
    assert result.exit_code == 1, result.output
    assert "scaled_dot_product_attention" in (project / "out" / "link.py").read_text()
