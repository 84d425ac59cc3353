"""Files and configuration like ruff: .gitignore/.ignore, exclude patterns relative to the project
root, --force-exclude for named files, and each file's own nearest configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import FIXTURES
from tf_migrate.cli import main
from tf_migrate.engine.config import Overrides, Resolver
from tf_migrate.engine.discovery import iter_python_files

LEGACY = FIXTURES / "sdpa" / "mingpt_tril_buffer.before.py"


def _files(*paths: Path, **kwargs) -> list[str]:
    found = iter_python_files(list(paths), Resolver(Overrides()), **kwargs)
    return sorted(p.as_posix() for p in found)


def run(*args, cwd: Path):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()  # enough for discovery: ignore files count inside a repository
    for name in ("keep.py", "gen/out.py", "gen/keep_me.py", "sub/notes.py", "sub/deep/x.py", "scratch.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("gen/*\n!gen/keep_me.py\nscratch.py\n")
    (tmp_path / "sub" / ".gitignore").write_text("deep/\n")
    (tmp_path / "sub" / ".ignore").write_text("notes.py\n")
    return tmp_path


def test_gitignored_files_and_folders_are_not_walked(repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo)
    assert _files(Path(".")) == ["gen/keep_me.py", "keep.py"]
    assert len(_files(Path("."), respect_gitignore=False)) == 6


def test_ignore_files_above_the_walked_folder_count_up_to_the_repository_root(repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo / "sub")
    assert _files(Path(".")) == []
    assert _files(repo / "gen") == [(repo / "gen" / "keep_me.py").as_posix()]


def test_a_named_file_is_taken_even_when_ignored(repo: Path) -> None:
    assert _files(repo / "scratch.py") == [(repo / "scratch.py").as_posix()]


def test_gitignored_legacy_file_is_not_migrated(repo: Path) -> None:
    shutil.copy(LEGACY, repo / "scratch.py")
    assert run(".", "--no-cache", cwd=repo).exit_code == 0
    assert run(".", "--no-cache", "--no-respect-gitignore", cwd=repo).exit_code == 1


def test_exclude_is_relative_to_the_configuration_file_not_to_the_path_argument(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.tf-migrate]\nexclude = ["src/vendor/"]\n'
                                             'extend-exclude = ["*_pb2.py"]\n')
    for name in ("src/vendor/a.py", "src/b.py", "src/c_pb2.py", "other/src/vendor/d.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LEGACY, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    from_root = _files(Path("."))
    assert from_root == ["other/src/vendor/d.py", "src/b.py"]  # anchored: only the root's src/vendor
    assert _files(Path("src")) == ["src/b.py"]  # the same files, whichever folder is named
    assert _files(Path("src/vendor")) == []


def test_force_exclude_applies_exclude_to_named_files(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.tf-migrate]\nexclude = ["third_party/"]\n')
    (tmp_path / "third_party").mkdir()
    shutil.copy(LEGACY, tmp_path / "third_party" / "gpt.py")
    named = tmp_path / "third_party" / "gpt.py"
    assert _files(named) == [named.as_posix()]
    assert _files(named, force_exclude=True) == []
    assert run(named, "--no-cache", cwd=tmp_path).exit_code == 1
    assert run(named, "--no-cache", "--force-exclude", cwd=tmp_path).exit_code == 0


def test_command_line_extend_exclude_is_relative_to_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    for name in ("a/gpt.py", "b/gpt.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LEGACY, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert _files(Path("."), extend_exclude=["a/"]) == ["b/gpt.py"]


def test_each_file_gets_its_nearest_configuration_in_any_argument_order(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(LEGACY, tmp_path / name / "gpt.py")
    (tmp_path / "a" / "pyproject.toml").write_text('[tool.tf-migrate]\nignore = ["TFM101"]\n')
    (tmp_path / "b" / "tf-migrate.toml").write_text('select = ["TFM101"]\n')
    outputs = []
    for order in (("a", "b"), ("b", "a")):
        result = run(*order, "--no-cache", "--format", "json", cwd=tmp_path)
        assert result.exit_code == 1, result.output
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    import json

    changed = {f["path"]: f["changed"] for f in json.loads(outputs[0])["files"]}
    assert changed == {"a/gpt.py": False, "b/gpt.py": True}


def test_a_pyproject_without_the_table_is_passed_over(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.tf-migrate]\nignore = ["TFM101"]\n')
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "pyproject.toml").write_text('[project]\nname = "pkg"\n')
    shutil.copy(LEGACY, tmp_path / "pkg" / "gpt.py")
    assert run("pkg", "--no-cache", cwd=tmp_path).exit_code == 0


def test_real_git_repository(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text("generated/\n")
    (tmp_path / "generated").mkdir()
    shutil.copy(LEGACY, tmp_path / "generated" / "gpt.py")
    assert run(".", "--no-cache", cwd=tmp_path).exit_code == 0


def test_a_named_folder_that_an_ignore_file_above_leaves_out_is_walked(repo: Path) -> None:
    # e.g. site-packages inside a git-managed ~/.pyenv whose .gitignore says `versions/`
    assert _files(repo / "gen") == [(repo / "gen" / "keep_me.py").as_posix()]  # not ignored itself
    (repo / ".gitignore").write_text("gen/\n")
    assert _files(repo / "gen") == sorted((repo / "gen" / n).as_posix() for n in ("keep_me.py", "out.py"))
    assert _files(repo) == [(repo / n).as_posix() for n in ("keep.py", "scratch.py")]
