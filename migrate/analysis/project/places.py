"""How a refusal names a place in another file of the run."""

from __future__ import annotations

import os


def shown_root(project, path: str) -> str:
    """The folder to show `path` from: the nearest one that holds both the run's files and `path`,
    above the packages it lies in (`gptlib/model.py`, `torch/nn/parallel/distributed.py`), else the
    project root. The root alone may sit far above the run (a `.git` above site-packages)."""
    folders = [os.path.dirname(f) for f in project.files]
    if folders:
        common = os.path.commonpath(folders + [os.path.dirname(path)])
        while os.path.isfile(os.path.join(common, "__init__.py")) and os.path.dirname(common) != common:
            common = os.path.dirname(common)  # name a package's files with the package: `gptlib/model.py`
        if os.path.dirname(common) != common:  # not the filesystem's root
            return common
    return project.root


def shown_path(project, path: str) -> str:
    """`path` relative to `shown_root`, or as is when it lies outside that folder."""
    root = shown_root(project, path)
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else path


def place(ctx, fctx, node) -> str:
    """`line 12` in the file being migrated; `pkg/model.py:12` in another file of the run."""
    if fctx is ctx or fctx.path == ctx.path:
        return f"line {fctx.line(node)}"
    return f"{shown_path(ctx.project, os.path.abspath(fctx.path))}:{fctx.line(node)}"
