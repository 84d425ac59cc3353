"""Robustness on code nobody here wrote: every Python source of the installed torch package."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
torch_spec = importlib.util.find_spec("torch")
TORCH = Path(torch_spec.origin).parent if torch_spec else None


def _migrate(source: Path, output: Path, cache: Path, files: list[Path] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tf_migrate", "migrate", *map(str, files or [source]), "--select", "all",
         "--format", "json", "--output-dir", str(output), "--cache-dir", str(cache)],
        capture_output=True, text=True)
    assert done.returncode in (0, 1, 2), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return {Path(f["path"]).resolve().relative_to(source.resolve()).as_posix(): f
            for f in json.loads(done.stdout)["files"]}


def _compiles(text: str, name: str) -> bool:
    try:
        compile(text, name, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


@pytest.mark.skipif(TORCH is None, reason="torch is not installed")
def test_whole_torch_tree(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    report = _migrate(TORCH, first, tmp_path / "cache")
    assert len(report) > 1000
    for name, entry in report.items():
        original = (TORCH / name).read_bytes()
        if entry["errors"]:
            assert not _compiles(original, name), f"{name}: {entry['errors']}"
            continue
        written = (first / name).read_bytes()
        if entry["changed"]:
            assert _compiles(written, name), name
        else:
            assert written == original, name
    # An untouched file is the original byte for byte, already seen to need no change: only the
    # rewritten files can differ on a second pass.
    rewritten = [first / name for name, entry in report.items() if entry["changed"]]
    if rewritten:
        again = _migrate(first, second, tmp_path / "cache", rewritten)
        assert not [name for name, entry in again.items() if entry["changed"]]
