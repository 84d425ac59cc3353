"""What tf-migrate promises under hostile conditions (issue 18): files changed during a run, special
files, size limits, caches, native crashes, exit codes. Each test reproduces one defect."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import FIXTURES
from tf_migrate.cli import main

LEGACY = FIXTURES / "sdpa" / "mingpt_tril_buffer.before.py"
USER_EDIT = "\n\ndef added_while_the_run_went_on():\n    return 1\n"


def run(*args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    path = tmp_path / "gpt.py"
    shutil.copy(LEGACY, path)
    return path


# --- 1. an edit made while the run goes on is never overwritten ---

def test_edit_between_read_and_write_is_kept(legacy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tf_migrate.engine import parallel

    work = parallel._work

    def edit_then_work(*args):  # runs after the parent read the file
        with open(legacy, "a") as handle:
            handle.write(USER_EDIT)
        return work(*args)

    monkeypatch.setattr(parallel, "_work", edit_then_work)
    result = run(legacy, "--write", "--no-cache", "-j", "1")
    assert result.exit_code == 2, result.output
    assert "changed on disk since it was read" in result.output and "1 error" in result.output
    assert legacy.read_text() == LEGACY.read_text() + USER_EDIT


def _waiting_for_lock(inode: int) -> bool:
    """Whether some process is blocked on a flock of this inode ('->' lines of /proc/locks)."""
    return any(line.split()[1] == "->" and line.split()[6].endswith(f":{inode}")
               for line in Path("/proc/locks").read_text().splitlines() if "->" in line)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_a_concurrent_writer_holding_the_lock_wins(legacy: Path) -> None:
    """Another run (here: this test) holds the lock and replaces the file; the waiting run must
    not write its result over the other's."""
    with open(legacy, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        child = subprocess.Popen([sys.executable, "-m", "tf_migrate", str(legacy), "--write", "--no-cache"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while not _waiting_for_lock(os.fstat(held.fileno()).st_ino):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()[0]
            time.sleep(0.05)
        other = legacy.with_name(".other")
        other.write_text(LEGACY.read_text() + USER_EDIT)
        os.replace(other, legacy)
    output, _ = child.communicate(timeout=60)
    assert child.returncode == 2 and "changed on disk since it was read" in output, output
    assert legacy.read_text() == LEGACY.read_text() + USER_EDIT


def test_unchanged_file_is_still_written(legacy: Path) -> None:
    assert run(legacy, "--write", "--no-cache").exit_code == 1
    assert "scaled_dot_product_attention" in legacy.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root")
def test_write_keeps_owner_and_group(legacy: Path) -> None:
    os.chown(legacy, 12345, 23456)
    assert run(legacy, "--write", "--no-cache").exit_code == 1
    info = legacy.stat()
    assert (info.st_uid, info.st_gid) == (12345, 23456)
    assert "scaled_dot_product_attention" in legacy.read_text()


# --- 7. special files and huge files are never read ---

def test_fifo_and_device_named_py_are_skipped_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.py")
    (tmp_path / "zero.py").symlink_to("/dev/zero")
    shutil.copy(LEGACY, tmp_path / "gpt.py")
    done = subprocess.run([sys.executable, "-m", "tf_migrate", str(tmp_path), "--no-cache"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "pipe.py: not a regular file (FIFO): skipped" in done.stdout
    assert "zero.py: not a regular file (character device): skipped" in done.stdout
    assert "gpt.py:" in done.stdout and "2 skipped" in done.stderr


def test_file_over_the_size_limit_is_an_error_the_others_go_on(tmp_path: Path) -> None:
    shutil.copy(LEGACY, tmp_path / "gpt.py")
    (tmp_path / "big.py").write_text("x = 1\n" * 500)
    result = run(tmp_path, "--no-cache", "--max-file-size", "2500")
    assert result.exit_code == 2, result.output
    assert "big.py: error: 3000 bytes, larger than --max-file-size (2500 bytes): not read" in result.output
    assert "gpt.py:41: TFM101" in result.output
    assert run(tmp_path / "big.py", "--no-cache").exit_code == 0  # the default limit is 10 MiB


# --- 4. a cache entry is checked before it is trusted ---

def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*.json"))


def test_tampered_cache_entry_that_does_not_compile_is_never_written(legacy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert run(legacy, "--cache-dir", cache).exit_code == 1
    [entry] = _entries(cache)
    entry.write_text(entry.read_text().replace("scaled_dot_product_attention(", "scaled_dot_product_attention(("))
    assert run(legacy, "--write", "--cache-dir", cache).exit_code == 1
    written = legacy.read_text()
    compile(written, "gpt.py", "exec")
    assert "scaled_dot_product_attention(q" in written.replace("\n", "").replace(" ", "")


def test_cache_entry_made_from_other_source_is_a_miss(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(LEGACY, tmp_path / "a" / "gpt.py")
    other = LEGACY.read_text().replace("class ", "class Other", 1)
    (tmp_path / "b" / "gpt.py").write_text(other)
    assert run(tmp_path / "a" / "gpt.py", "--cache-dir", cache).exit_code == 1
    assert run(tmp_path / "b" / "gpt.py", "--cache-dir", cache).exit_code == 1
    first, second = _entries(cache)
    shutil.copy(first, second)  # each key now holds the same entry: one of them lies
    for folder in "ab":
        assert run(tmp_path / folder / "gpt.py", "--write", "--cache-dir", cache).exit_code == 1
    assert "class Other" in (tmp_path / "b" / "gpt.py").read_text()
    assert "class Other" not in (tmp_path / "a" / "gpt.py").read_text()


# --- 6. one-line errors with exit 2, never a traceback with exit 1 ---

def test_symlink_loops_are_errors_of_their_path(legacy: Path, tmp_path: Path) -> None:
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    (tmp_path / "self.py").symlink_to("self.py")
    result = run(tmp_path / "loop1", tmp_path, "--no-cache")
    assert result.exit_code == 2, result.output
    assert "loop1: error: cannot read: Too many levels of symbolic links" in result.output
    assert "self.py: error: cannot read: Too many levels of symbolic links" in result.output
    assert "gpt.py:41: TFM101" in result.output and "Traceback" not in result.output


def test_unreadable_subdirectory_does_not_stop_the_walk(legacy: Path, monkeypatch) -> None:
    (legacy.parent / "locked").mkdir()
    exists = Path.exists

    def denied(self, *args, **kwargs):  # what a folder without x permission gives a non-root user
        if self.parent.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", denied)
    result = run(legacy.parent, "--no-cache")
    assert result.exit_code == 1 and "gpt.py:41: TFM101" in result.output, result.output


@pytest.mark.parametrize("toml", ["tool = 3\n", '[tool]\ntf-migrate = "x"\n'])
def test_malformed_tool_table_is_a_usage_error(legacy: Path, toml: str) -> None:
    (legacy.parent / "pyproject.toml").write_text(toml)
    result = run(legacy, "--no-cache")
    assert result.exit_code == 2 and "must be a table" in result.output, result.output
    assert not isinstance(result.exception, AttributeError)


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_verify_rejects_tolerances_that_are_not_finite_and_positive(legacy: Path, value: str) -> None:
    result = run("verify", legacy, legacy, "--build", "None", "--rtol", value)
    assert result.exit_code == 2 and "is not a finite number >= 0" in result.output, result.output


def test_verify_entry_outside_the_tree_is_a_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    shutil.copy(LEGACY, tmp_path / "x.py")
    result = run("verify", tmp_path / "a", tmp_path / "b", "--build", "None", "--entry", "../x.py")
    assert result.exit_code == 2 and "--entry ../x.py: must name a file inside" in result.output, result.output


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_convert_onto_a_full_disk_is_one_line(tmp_path: Path, monkeypatch, suffix: str) -> None:
    torch = pytest.importorskip("torch")
    import json

    import safetensors
    import safetensors.torch

    plan = {"version": 1, "classes": [{"file": "m.py", "class": "M", "rules": ["TFM102"],
                                       "renamed": {"a.weight": "b.weight"}}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    torch.save({"a.weight": torch.zeros(2)}, tmp_path / "old.pt")

    def full(*args, **kwargs):
        if suffix == ".pt":
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
        raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    result = run("convert", tmp_path / "old.pt", tmp_path / f"new{suffix}", "--plan", tmp_path / "plan.json")
    assert result.exit_code == 2, result.output
    assert "cannot write the converted checkpoint" in result.output and "nothing was written" in result.output
    assert not (tmp_path / f"new{suffix}").exists()


def test_unexpected_exception_is_an_internal_error_with_exit_2(legacy: Path, monkeypatch) -> None:
    from tf_migrate.engine import run as engine_run

    def bug(options, out):
        raise KeyError("a bug")

    monkeypatch.setattr(engine_run, "run", bug)
    result = run(legacy, "--no-cache")
    assert result.exit_code == 2 and "please report" in result.output, result.output


# --- 9. deep but valid expressions: analysed, or refused with a reason; never a RecursionError ---

ENCODER = FIXTURES / "prenorm" / "annotated_encoder.before.py"
DEEP = {"sum-400": " + ".join(["x"] * 400), "attributes-500": "x" + ".a" * 500,
        "calls-500": "f(x)" + ".g()" * 500}


@pytest.mark.parametrize("expression", DEEP.values(), ids=DEEP.keys())
def test_deep_expression_beside_a_block_does_not_stop_prenorm(expression: str) -> None:
    from tf_migrate.engine.file import migrate_source
    from tf_migrate.rules.prenorm import PostNormToPreNorm

    text = ENCODER.read_text() + f"\n\ndef helper(x, f):\n    return {expression}\n"
    result = migrate_source(text, "deep.py", [PostNormToPreNorm()])
    assert not result.errors, result.errors[0][:300]
    assert [e.code for e in result.edits] == ["TFM201", "TFM201"] and result.changed
    assert result.migrated.endswith(f"return {expression}\n")


def test_long_sum_inside_a_block_is_refused_with_its_line() -> None:
    from tf_migrate.engine.file import migrate_source
    from tf_migrate.rules.prenorm import PostNormToPreNorm

    text = ENCODER.read_text().replace("        x = self.norm1(", f"        y = {DEEP['sum-400']}\n"
                                       "        x = self.norm1(", 1)
    result = migrate_source(text, "deep.py", [PostNormToPreNorm()])
    assert not result.errors and not result.changed
    [refusal] = result.refusals
    assert "more than 100 additions" in refusal.reason and refusal.line == 16


# --- 8. a native crash costs one file, not the run ---

def _abort_on(monkeypatch, name: str) -> None:
    """Workers are forked from this process: they call this stand-in for the engine, which kills
    the process (as libcst's parser does on some huge files) when it sees the file `name`."""
    from tf_migrate.engine import parallel

    migrate_source = parallel.migrate_source

    def crashing(text, path, *args):
        if path.endswith(name):
            os.abort()
        return migrate_source(text, path, *args)

    monkeypatch.setattr(parallel, "migrate_source", crashing)


@pytest.fixture
def four_files(tmp_path: Path) -> Path:
    for name in ("a.py", "b.py", "crash.py", "d.py"):
        shutil.copy(LEGACY, tmp_path / name)
    return tmp_path


@pytest.mark.skipif(sys.platform != "linux", reason="relies on forked workers")
def test_worker_killed_by_one_file_fails_that_file_only(four_files: Path, monkeypatch) -> None:
    _abort_on(monkeypatch, "crash.py")
    result = run(four_files, "--no-cache", "-j", "2")
    assert result.exit_code == 2, result.output
    assert "crash.py: error: the parser crashed on this file" in result.output
    for name in ("a.py", "b.py", "d.py"):
        assert f"{name}:41: TFM101" in result.output, result.output
    assert "3 files would change, 0 unchanged, 0 refusals, 1 error" in result.output


@pytest.mark.skipif(sys.platform != "linux", reason="relies on forked workers")
def test_large_file_is_parsed_in_a_child_with_one_job(four_files: Path, monkeypatch) -> None:
    from tf_migrate.engine import parallel

    _abort_on(monkeypatch, "crash.py")
    monkeypatch.setattr(parallel, "RISKY_CHARS", len(LEGACY.read_text()) - 1)
    result = run(four_files, "--no-cache", "-j", "1")
    assert result.exit_code == 2, result.output
    assert "crash.py: error: the parser crashed on this file" in result.output
    assert "3 files would change" in result.output


# --- 12. valid files: the right message, the file's own newlines, sane diff headers ---

@pytest.mark.parametrize("indent", ["\x0c        return", "    \x0c    return"], ids=["ff-first", "ff-inside"])
def test_form_feed_in_indentation_is_named_with_its_line(tmp_path: Path, indent: str) -> None:
    path = tmp_path / "ff.py"
    text = LEGACY.read_text().replace("        return", indent, 1)
    path.write_text(text)
    line = text[:text.index(indent)].count("\n") + 1
    result = run(path, "--write", "--no-cache")
    assert result.exit_code == 2
    assert f"ff.py: error: form feed in indentation at line {line}" in result.output, result.output
    assert path.read_text() == text


def test_inserted_helper_uses_the_files_crlf(tmp_path: Path) -> None:
    path = tmp_path / "rope.py"
    path.write_bytes((FIXTURES / "rope" / "pe_module_einsum.before.py").read_bytes().replace(b"\n", b"\r\n"))
    assert run(path, "--select", "TFM401", "--write", "--no-cache").exit_code == 1
    written = path.read_bytes()
    assert b"def apply_rotary" in written and b"\n" not in written.replace(b"\r\n", b"")


def test_diff_headers_of_an_absolute_path(legacy: Path) -> None:
    result = run(legacy, "--diff", "--no-cache")
    assert f"--- a{legacy}\n+++ b{legacy}\n" in result.stdout, result.stdout[:300]


# --- 3. strings of the file that name what a fix removes: refused with the string's line ---

@pytest.mark.parametrize("fixture, code, string, line", [
    ("fused_qkv/string_plan_names_projection.noop.py", "TFM102", "attention.wq", 30),
    ("swiglu/string_targets_name_ffn.noop.py", "TFM301", "ff.w1", 40),
], ids=["fused-qkv", "swiglu"])
def test_string_naming_a_changed_attribute_is_refused(fixture: str, code: str, string: str, line: int) -> None:
    from tf_migrate.engine.file import migrate_source
    from tf_migrate.engine.registry import find_rule

    path = FIXTURES / fixture
    result = migrate_source(path.read_text(), fixture, [find_rule(code)()])
    assert not result.changed and not result.errors
    [refusal] = result.refusals
    assert refusal.code == code and string in refusal.reason and str(line) in refusal.reason, refusal.reason


def test_string_references_match_segments_not_prose() -> None:
    import libcst as cst

    from tf_migrate.analysis.string_refs import naming_strings
    from tf_migrate.engine.context import FileContext

    text = ('a = {"layers.0.attention.wq.weight": 1}\nb = ["wv"]\nc = f"layers.{i}.wk"\n'
            'd = "the wq projection"\ne = "wqx.weight"\nf = b"wq"\n')
    ctx = FileContext(cst.parse_module(text), "t.py", text)
    assert [(ctx.line(node), name) for node, name in naming_strings(ctx, ["wq", "wk", "wv"])] == [
        (1, "wq"), (2, "wv"), (3, "wk")]


# --- 11. projections written on one line with `;`: refused, not silently skipped ---

def test_projections_on_one_line_are_refused() -> None:
    from tf_migrate.engine.file import migrate_source
    from tf_migrate.rules.fused_qkv import SeparateQkvToFused

    before = FIXTURES / "fused_qkv" / "gqa_sizes_unbiased.before.py"
    text = before.read_text().replace(
        "bias=False)\n        self.k_proj", "bias=False); self.k_proj", 1)
    assert "; self.k_proj" in text
    result = migrate_source(text, "semi.py", [SeparateQkvToFused()])
    assert not result.changed
    [refusal] = result.refusals
    assert refusal.line == 12 and "shared with other statements (`;`)" in refusal.reason
