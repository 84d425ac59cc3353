"""Pre-filter without libcst, parallel runs in input order, and the result cache."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tf_migrate.engine import parallel
from tf_migrate.engine.registry import all_rules
from tf_migrate.engine.ruleindex import rule_index
from tf_migrate.engine.run import RunOptions, run

ROOT = Path(__file__).resolve().parent.parent
SDPA = ROOT / "fixtures" / "sdpa"
CASES = ["mingpt_tril_buffer.before.py", "returns_probs.noop.py", "one_expression.before.py"]


def _tree(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    for name in CASES:
        shutil.copy(SDPA / name, folder / name)
    for i in range(3):
        (folder / f"plain{i}.py").write_text(f"x = {i}\n")
    return folder


def _run(**kwargs) -> tuple[int, str]:
    out = io.StringIO()
    return run(RunOptions(**kwargs), out), out.getvalue()


def test_no_candidate_run_imports_neither_libcst_nor_torch(tmp_path):
    for i in range(10):
        (tmp_path / f"f{i}.py").write_text(f"def f():\n    return {i}\n")
    code = ("import io, sys\nfrom pathlib import Path\nfrom tf_migrate.cli import main\n"
            "from tf_migrate.engine.run import RunOptions, run\n"
            f"rc = run(RunOptions([Path({str(tmp_path)!r})], select=['all']), io.StringIO())\n"
            "print(rc, 'libcst' in sys.modules, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "False", "False"]


def test_rule_index_agrees_with_the_imported_rules():
    index = {info.code: info for info in rule_index()}
    for rule in all_rules():
        info = index[rule.code]
        assert (info.name, info.equivalence, info.summary, info.triggers, dict(info.options)) == (
            rule.name, rule.equivalence, rule.summary, tuple(rule.triggers), dict(rule.options))


def test_two_jobs_print_the_same_as_one_in_input_order(tmp_path):
    folder = _tree(tmp_path)
    one = _run(paths=[folder], jobs=1, use_cache=False, select=["all"])
    two = _run(paths=[folder], jobs=2, use_cache=False, select=["all"])
    assert one == two
    per_file, _, table = one[1].partition("\n\n")  # the census table follows the files' lines
    printed = [line.split(":")[0] for line in per_file.splitlines()]
    assert printed == sorted(printed) and len(printed) == 4  # returns_probs: two refusals (TFM101, TFM102)
    assert table.splitlines()[0].startswith("rule")


def test_the_cache_serves_unchanged_files_without_parsing(tmp_path, monkeypatch):
    folder, cache = _tree(tmp_path), tmp_path / "cache"
    first = _run(paths=[folder], jobs=1, cache_dir=cache, select=["all"], fmt="json")
    assert list(cache.glob("*/*.json"))

    def boom(*args):
        raise AssertionError("parsed a cached file")

    monkeypatch.setattr(parallel, "_work", boom)
    assert _run(paths=[folder], jobs=1, cache_dir=cache, select=["all"], fmt="json") == first
    with pytest.raises(AssertionError):  # another configuration is another key
        _run(paths=[folder], jobs=1, cache_dir=cache, select=["TFM101"])


def test_a_cached_rewrite_is_written_like_a_fresh_one(tmp_path):
    folder, cache = _tree(tmp_path), tmp_path / "cache"
    _run(paths=[folder], jobs=1, cache_dir=cache, select=["all"])
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    _run(paths=[folder], jobs=1, cache_dir=cache, select=["all"], output_dir=out_a)
    _run(paths=[folder], jobs=1, use_cache=False, select=["all"], output_dir=out_b)
    for name in CASES:
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes()
    assert (out_a / CASES[0]).read_bytes() != (folder / CASES[0]).read_bytes()


def test_a_cached_result_keeps_its_notes(tmp_path):
    folder, cache = tmp_path / "src", tmp_path / "cache"
    folder.mkdir()
    shutil.copy(ROOT / "fixtures" / "prenorm" / "already_prenorm.noop.py", folder / "block.py")
    cold = _run(paths=[folder], jobs=1, cache_dir=cache, select=["TFM201"], fmt="json")
    assert '"notes": []' not in cold[1]
    assert _run(paths=[folder], jobs=1, cache_dir=cache, select=["TFM201"], fmt="json") == cold


def test_a_damaged_cache_entry_is_a_miss(tmp_path):
    folder, cache = _tree(tmp_path), tmp_path / "cache"
    first = _run(paths=[folder], jobs=1, cache_dir=cache, select=["all"], fmt="json")
    for i, entry in enumerate(cache.glob("*/*.json")):
        entry.write_text(['{"path": 1', '[]', '{"migrated": 3}', ''][i % 4])
    assert _run(paths=[folder], jobs=1, cache_dir=cache, select=["all"], fmt="json") == first


def _work_crashing_on_crash_py(display, *args):
    if display.endswith("crash.py"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return _real_work(display, *args)


_real_work = parallel._work


def test_a_crashed_worker_is_an_error_of_its_files_not_of_the_run(tmp_path, monkeypatch):
    folder = _tree(tmp_path)
    shutil.copy(SDPA / CASES[0], folder / "crash.py")
    monkeypatch.setattr(parallel, "_work", _work_crashing_on_crash_py)
    code, printed = _run(paths=[folder], jobs=2, use_cache=False, select=["all"], fmt="json")
    files = {Path(f["path"]).name: f for f in json.loads(printed)["files"]}
    assert code == 2 and files["crash.py"]["errors"] and len(files) == 7


def test_without_paths_allow_empty_is_a_quiet_success():
    exe = [sys.executable, "-m", "tf_migrate"]
    done = subprocess.run(exe + ["--allow-empty", "--write"], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert subprocess.run(exe + ["migrate"], capture_output=True).returncode == 2


def test_two_jobs_load_the_rules_once_before_the_workers_fork(tmp_path):
    """Forked workers inherit the rules instead of importing them again each (engine/parallel.py)."""
    folder = _tree(tmp_path)
    code = ("import io, sys\nfrom pathlib import Path\n"
            "from tf_migrate.engine.run import RunOptions, run\n"
            f"rc = run(RunOptions([Path({str(folder)!r})], select=['TFM101'], jobs=2, use_cache=False), io.StringIO())\n"
            "print('tf_migrate.rules.sdpa' in sys.modules, 'tf_migrate.rules.swiglu' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-2:] == ["True", "False"]
