"""Checkpoint keys a fusion removes, named as strings anywhere in the tree.

A conversion or loading script (`state["encoder.attn.w_qs.weight"]`) reads a key that is gone
once q/k/v are fused: the fusion is refused naming the file and line. Only strings spelled as a
state_dict key (dotted, ending in the removed attribute or its `.weight`/`.bias`) count; the file
being migrated is checked by `projections.naming_string`.
"""

from __future__ import annotations

import ast
import re

from tf_migrate.analysis.project.places import shown_path

_KEY = re.compile(r"""["']([A-Za-z_][\w.]*\.(?:weight|bias)|[A-Za-z_][\w]*(?:\.[\w]+)+)["']""")


def old_key_reader(ctx, attributes: list[str]) -> str | None:
    """Why a key under a removed attribute (`w_qs.weight`, `linears.0.bias`, through a wrapper
    `q_proj.linear.weight`, a raw weight `w_q`) is still read elsewhere: the first string of
    another file that is such a key, alone or at the end of a dotted path; None when none is."""
    patterns = [re.compile(rf"(?:^|\.){re.escape(a)}(?:(?:\.\w+)*\.(?:weight|bias))?$") for a in attributes]
    for path, line, text in _key_strings(ctx.project):
        if path != ctx.project_key and any(p.search(text) for p in patterns):
            return f"the string '{text}' ({shown_path(ctx.project, path)}:{line}) reads a checkpoint key the fusion removes"
    return None


def _key_strings(project) -> list[tuple[str, int, str]]:
    """(file, line, string) for every dotted string constant of the tree, found once per run."""
    def collect():
        found = []
        for path in sorted(project.files):
            text = project.text(path)
            if text is None or not _KEY.search(text):
                continue
            summary = project.summary(path)
            if summary is None:
                continue
            for node in ast.walk(summary.tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                        and _KEY.fullmatch(repr(node.value)):
                    found.append((path, node.lineno, node.value))
        return found

    return project.memo(("tfm102 key strings",), collect)
