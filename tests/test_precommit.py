"""The pre-commit hook, installed from this checkout by the real `pre-commit` tool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "fixtures" / "sdpa" / "mingpt_tril_buffer.before.py"

pytestmark = pytest.mark.slow


def _git(repo: Path, *args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=check)


@pytest.fixture
def env(tmp_path):
    if shutil.which("pre-commit") is None:
        pytest.fail("pre-commit is not installed (it is in the dev extra)")
    return {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def test_hook_rewrites_a_legacy_file_fails_the_commit_then_passes(tmp_path, env):
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q", env=env)
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {ROOT}\n  rev: {rev}\n  hooks:\n  - id: tf-migrate\n")
    subprocess.run(["pre-commit", "install"], cwd=repo, env=env, check=True, capture_output=True)
    shutil.copy(LEGACY, repo / "model.py")
    _git(repo, "add", ".", env=env)

    first = _git(repo, "commit", "-qm", "legacy model", env=env, check=False)
    assert first.returncode != 0, first.stdout + first.stderr
    assert "files were modified by this hook" in first.stdout + first.stderr
    migrated = (repo / "model.py").read_text()
    assert "scaled_dot_product_attention" in migrated and migrated != LEGACY.read_text()

    _git(repo, "add", ".", env=env)
    second = _git(repo, "commit", "-qm", "legacy model, migrated", env=env, check=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert _git(repo, "status", "--porcelain", env=env).stdout == ""
