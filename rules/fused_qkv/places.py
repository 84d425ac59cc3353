"""How a refusal names a place in another file of the run."""

from __future__ import annotations

import os


def shown_path(project, path: str) -> str:
    """`path` relative to the folder the run's files share (`model.py`, `pkg/blocks.py`), as the
    user named the run; relative to the project root when it lies elsewhere inside it, else as is.
    The root alone may sit far above the run (a `.git` above a site-packages torch tree)."""
    folders = [os.path.dirname(f) for f in project.files]
    if folders:
        common = os.path.commonpath(folders)
        if path.startswith(common + os.sep):
            return os.path.relpath(path, common)
    return os.path.relpath(path, project.root) if project.inside(path) else path


def place(ctx, fctx, node) -> str:
    """`line 12` in the file being migrated; `pkg/model.py:12` in another file of the run."""
    if fctx is ctx or fctx.path == ctx.path:
        return f"line {fctx.line(node)}"
    return f"{shown_path(ctx.project, os.path.abspath(fctx.path))}:{fctx.line(node)}"
