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


def test_hook_keeps_the_projects_ignore_and_exclude_and_shows_refusals(tmp_path, env):
    """`ignore` in pyproject still applies (the hook passes no --select), `exclude` applies to the
    files pre-commit names (--force-exclude), and a refusal is shown although the hook passes."""
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    repo = tmp_path / "project"
    (repo / "vendor").mkdir(parents=True)
    _git(repo, "init", "-q", env=env)
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {ROOT}\n  rev: {rev}\n  hooks:\n  - id: tf-migrate\n")
    (repo / "pyproject.toml").write_text('[tool.tf-migrate]\nignore = ["TFM101"]\nexclude = ["vendor/"]\n')
    shutil.copy(LEGACY, repo / "model.py")  # TFM101 would rewrite it
    shutil.copy(LEGACY, repo / "vendor" / "gpt.py")
    # TFM101 would rewrite this one too; TFM102 refuses its projections (bias presence differs)
    shutil.copy(ROOT / "fixtures" / "models" / "kv_cache_gpt.py", repo / "refused.py")
    _git(repo, "add", ".", env=env)
    before = {p: (repo / p).read_bytes() for p in ("model.py", "vendor/gpt.py", "refused.py")}

    result = subprocess.run(["pre-commit", "run", "--all-files"], cwd=repo, env=env, capture_output=True,
                            text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert {p: (repo / p).read_bytes() for p in before} == before
    assert "refused.py:" in output and "TFM102 refused" in output  # visible without --verbose
