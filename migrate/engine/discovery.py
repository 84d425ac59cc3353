"""Which files a run looks at: `*.py` under the given paths, minus the usual non-source folders."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Iterable, Iterator

SKIPPED_DIRS = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    ".tox", ".nox", ".eggs", "node_modules", "build", "dist", "site-packages",
    ".venv", "venv", "env", ".tf-migrate-cache",
})


def real_path(path: Path) -> Path:
    """`path` with every symlink resolved; a symlink loop stays as it is instead of raising
    (Path.resolve raises RuntimeError on loops before Python 3.13), so reading it reports it."""
    return Path(os.path.realpath(path))


def _is_virtualenv(folder: Path) -> bool:
    try:
        return (folder / "pyvenv.cfg").exists()
    except OSError:  # an unreadable folder: walked as any other, its own errors reported there
        return False


def _excluded(relative: str, patterns: Iterable[str]) -> bool:
    parts = relative.split("/")
    return any(
        fnmatch.fnmatch(relative, pattern) or any(fnmatch.fnmatch(part, pattern) for part in parts)
        for pattern in patterns
    )


def iter_python_files(paths: Iterable[Path], exclude: Iterable[str] = ()) -> Iterator[Path]:
    """Yield files in a stable order; paths given explicitly are always yielded.

    A path that does not exist is yielded too, so the engine reports it as an error.
    """
    seen: set[Path] = set()
    for path in _walk(paths, list(exclude)):
        key = real_path(path)
        if key not in seen:  # `src src/a.py`, or a file named twice: one result, one write
            seen.add(key)
            yield path


def _walk(paths: Iterable[Path], exclude: list[str]) -> Iterator[Path]:
    for root in paths:
        if not root.is_dir():
            yield root
            continue
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = sorted(
                d for d in dirs
                if d not in SKIPPED_DIRS and not d.endswith(".egg-info")
                and not _is_virtualenv(here / d)
                and not _excluded((here / d).relative_to(root).as_posix(), exclude)
            )
            for name in sorted(files):
                path = here / name
                if name.endswith(".py") and not _excluded(path.relative_to(root).as_posix(), exclude):
                    yield path
