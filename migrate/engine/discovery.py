"""Which files a run looks at: `*.py` under the given paths, minus what the project leaves out.

Left out when walking a folder: the usual non-source folders (`.git`, virtual environments,
`build`, caches, ...), what `.gitignore` / `.ignore` files say (and `.git/info/exclude`; not with
`respect_gitignore=False`), and each folder's configured `exclude` / `extend-exclude` patterns.
Patterns are gitignore-style (pathspec's gitwildmatch) and relative to the folder of the file that
holds them: the configuration file's folder for `exclude`, the working directory for the command
line's. A path named explicitly is always taken, unless `force_exclude` applies the excludes to it
too (pre-commit names every staged file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    from tf_migrate.engine.config import Config, Resolver

SKIPPED_DIRS = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    ".tox", ".nox", ".eggs", "node_modules", "build", "dist", "site-packages",
    ".venv", "venv", "env", ".tf-migrate-cache",
})
IGNORE_FILES = (".ignore", ".gitignore")  # the first wins where both speak (as in ripgrep)


def real_path(path: Path) -> Path:
    """`path` with every symlink resolved; a symlink loop stays as it is instead of raising
    (Path.resolve raises RuntimeError on loops before Python 3.13), so reading it reports it."""
    return Path(os.path.realpath(path))


def _is_virtualenv(folder: Path) -> bool:
    try:
        return (folder / "pyvenv.cfg").exists()
    except OSError:  # an unreadable folder: walked as any other, its own errors reported there
        return False


def _spec(lines: Iterable[str]) -> Any:
    import pathspec  # only runs that meet a pattern pay for the import

    return pathspec.GitIgnoreSpec.from_lines(list(lines))


def _relative(path: Path, base: Path) -> str | None:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return None


@dataclass(frozen=True)
class _IgnoreFile:
    base: Path
    spec: Any

    def verdict(self, path: Path, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included by a `!` pattern, None: the file does not say."""
        relative = _relative(path, self.base)
        if relative is None:
            return None
        return self.spec.check_file(relative + ("/" if is_dir else "")).include


def _read_ignore_files(folder: Path, names: Iterable[str]) -> list[_IgnoreFile]:
    found = []
    for name in names:
        try:
            lines = (folder / name).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if any(line.strip() and not line.startswith("#") for line in lines):
            found.append(_IgnoreFile(folder, _spec(lines)))
    return found


def _git_root(folder: Path) -> Path | None:
    for candidate in [folder, *folder.parents]:
        if (candidate / ".git").exists():
            return candidate
    return None


def _ancestor_ignores(root: Path) -> list[_IgnoreFile]:
    """Ignore files above a walked folder, up to its git repository's root (nearest last)."""
    git_root = _git_root(root)
    if git_root is None:
        return []
    found = _read_ignore_files(git_root / ".git" / "info", ["exclude"])
    found = [_IgnoreFile(git_root, f.spec) for f in found]
    folders = [root.parent, *root.parent.parents] if root != git_root else []
    for folder in reversed([f for f in folders if f == git_root or git_root in f.parents]):
        found.extend(reversed(_read_ignore_files(folder, IGNORE_FILES)))
    if found and _ignored(found, root, True):
        return []  # a folder named on purpose is walked although they leave it out (as ripgrep does)
    return found


def _ignored(stack: Sequence[_IgnoreFile], path: Path, is_dir: bool) -> bool:
    for ignore_file in reversed(stack):  # the nearest file that has a say decides
        verdict = ignore_file.verdict(path, is_dir)
        if verdict is not None:
            return verdict
    return False


class Excludes:
    """`exclude` + `extend-exclude` of a configuration, and the command line's `--extend-exclude`."""

    def __init__(self, cli_patterns: Sequence[str] = ()) -> None:
        self._cli = _spec(cli_patterns) if cli_patterns else None
        self._specs: dict[int, Any] = {}

    def excluded(self, config: "Config", path: Path, is_dir: bool) -> bool:
        path = Path(os.path.abspath(path))
        suffix = "/" if is_dir else ""
        if self._cli is not None:
            relative = _relative(path, Path.cwd())
            if self._cli.match_file((relative if relative is not None else path.name) + suffix):
                return True
        patterns = config.excludes
        if not patterns:
            return False
        key = id(config)
        if key not in self._specs:
            self._specs[key] = (config, _spec(patterns))  # the config kept alive: its id stays its own
        spec = self._specs[key][1]
        relative = _relative(path, config.root or Path.cwd())
        return bool(spec.match_file((relative if relative is not None else path.name) + suffix))


def iter_python_files(paths: Iterable[Path], resolver: "Resolver", *, respect_gitignore: bool = True,
                      force_exclude: bool = False, extend_exclude: Sequence[str] = ()) -> Iterator[Path]:
    """Yield files in a stable order, each once; paths given explicitly are yielded (unless
    `force_exclude` and excluded), also when they do not exist, so the engine reports them."""
    excludes = Excludes(extend_exclude)
    seen: set[Path] = set()
    for root in paths:
        if str(root) != "-" and root.is_dir():
            candidates = _walk(root, resolver, excludes, respect_gitignore)
        elif force_exclude and str(root) != "-" and excludes.excluded(resolver.for_file(root), root, False):
            continue
        else:
            candidates = iter([root])
        for path in candidates:
            key = real_path(path)
            if key not in seen or str(path) == "-":  # `src src/a.py`: one result, one write
                seen.add(key)
                yield path


def _walk(root: Path, resolver: "Resolver", excludes: Excludes, respect_gitignore: bool) -> Iterator[Path]:
    absolute_root = Path(os.path.abspath(root))
    stacks: dict[Path, list[_IgnoreFile]] = {
        absolute_root: _ancestor_ignores(absolute_root) if respect_gitignore else []}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        absolute = Path(os.path.abspath(here))
        stack = stacks.pop(absolute, [])
        if respect_gitignore:
            own = [name for name in IGNORE_FILES if name in files]
            stack = stack + list(reversed(_read_ignore_files(absolute, own)))
        config = resolver.for_folder(absolute)

        def keep(name: str, is_dir: bool) -> bool:
            path = absolute / name
            return not (excludes.excluded(config, path, is_dir) or (stack and _ignored(stack, path, is_dir)))

        dirs[:] = sorted(
            d for d in dirs
            if d not in SKIPPED_DIRS and not d.endswith(".egg-info")
            and not _is_virtualenv(here / d) and keep(d, True)
        )
        for d in dirs:
            stacks[absolute / d] = stack
        for name in sorted(files):
            if name.endswith(".py") and keep(name, False):
                yield here / name
