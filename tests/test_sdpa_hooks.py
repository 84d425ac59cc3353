"""TFM101 and hooks on the softmax/dropout modules it would stop calling: in the attention's own
file (`rules/sdpa/module_hooks.py`) and in other files (`consumers_of`), both read by
`analysis.contracts`."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from tf_migrate.analysis.contracts import hook_registrations, type_tests
from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine.file import migrate_source
from tf_migrate.rules.sdpa import EinsumAttentionToSdpa

from project_support import write_project

FOLDER = Path(__file__).resolve().parent.parent / "fixtures" / "sdpa" / "hooked_elsewhere"
_MODULES = frozenset({"torch.nn.Softmax", "torch.nn.Dropout"})


def _tree(folder: Path) -> dict:
    files = sorted(folder.glob("*.py"))
    project = ProjectIndex.for_files(files)
    return {p.name: migrate_source(p.read_text(), str(p), [EinsumAttentionToSdpa()], project=project,
                                   source_path=str(p)) for p in files}


def test_a_hook_in_another_file_is_refused_naming_its_line() -> None:
    results = _tree(FOLDER)
    assert all(not r.errors and not r.edits for r in results.values())
    [refusal] = results["dropmix.py"].refusals
    assert refusal.line == 15
    assert "stop calling `self.mix_drop`" in refusal.reason
    assert "a hook is registered on `.mix_drop` (" in refusal.reason
    assert "hooked_elsewhere/dropcount.py:8)" in refusal.reason


def test_without_the_hook_the_attention_is_rewritten(tmp_path: Path) -> None:
    """The twin: the same tree whose probe hooks another module."""
    shutil.copytree(FOLDER, tmp_path / "pkg")
    probe = tmp_path / "pkg" / "dropcount.py"
    probe.write_text(probe.read_text().replace("model.dropmixer.mix_drop.", "model.dropmixer.qkv."))
    results = _tree(tmp_path / "pkg")
    assert not results["dropmix.py"].refusals
    assert "scaled_dot_product_attention" in results["dropmix.py"].migrated


ATTENTION = """
    import torch
    import torch.nn as nn


    class DropAttention(nn.Module):
        def __init__(self, width, p=0.1):
            super().__init__()
            self.attn_drop = nn.Dropout(p)

        def forward(self, q, k, v):
            weights = torch.softmax(q @ k.transpose(-2, -1) * q.size(-1) ** -0.5, dim=-1)
            return self.attn_drop(weights) @ v
"""


def _one_file(text: str):
    text = textwrap.dedent(ATTENTION) + textwrap.dedent(text)
    return text, migrate_source(text, "attention.py", [EinsumAttentionToSdpa()])


def test_a_type_imported_inside_a_function_picks_the_dropout() -> None:
    text, result = _one_file("""

        def trace(model, seen):
            from torch.nn import Dropout

            dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
            for module in dropouts:
                module.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    """)
    assert result.migrated == text and not result.edits
    [refusal] = result.refusals
    assert refusal.line == 19 and "(`isinstance(m, Dropout)`)" in refusal.reason
    assert "hooks are registered in this file (line 21)" in refusal.reason


def test_a_type_test_without_a_hook_is_no_reason() -> None:
    text, result = _one_file("""

        def count(model):
            from torch.nn import Dropout

            return sum(isinstance(m, Dropout) for m in model.modules())
    """)
    assert not result.refusals and "scaled_dot_product_attention" in result.migrated


def test_registrations_and_type_tests_in_the_order_of_the_text(tmp_path: Path) -> None:
    project = write_project(tmp_path, {"probe.py": """
        import torch.nn as nn
        from torch import nn as tnn


        def attach(model, hook):
            model.a.register_forward_hook(hook(model.b.register_forward_pre_hook(hook)))
            if isinstance(model.c, (nn.Linear, tnn.Softmax)):
                hooks.register_full_backward_hook(hook)
            return isinstance(model.d, nn.Dropout), isinstance(model.e, nn.Linear)
    """})
    path = str(tmp_path / "probe.py")
    assert [(r.line, r.callee, r.target) for r in hook_registrations(project, path)] == [
        (7, "model.a.register_forward_hook", "a"), (7, "model.b.register_forward_pre_hook", "b"),
        (9, "hooks.register_full_backward_hook", None)]
    assert [(t.line, t.type) for t in type_tests(project, path, _MODULES)] == [(8, "tnn.Softmax"), (10, "nn.Dropout")]


PICKED = """
    import torch.nn as nn


    def watch_dropouts(model, seen):
        drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        for drop in drops:
            drop.register_forward_hook(lambda m, args, out: seen.append(out.shape))
"""


def test_modules_picked_by_type_in_another_file_then_hooked_are_refused(tmp_path: Path) -> None:
    """The dropouts are picked in one statement and hooked in a later loop (not one walk over
    `modules()`): in another file as in the attention's own, the rewrite is refused."""
    write_project(tmp_path, {"pkg/__init__.py": "", "pkg/attention.py": ATTENTION, "pkg/watch.py": PICKED})
    results = _tree(tmp_path / "pkg")
    assert not results["attention.py"].edits
    [refusal] = results["attention.py"].refusals
    assert "stop calling `self.attn_drop`" in refusal.reason
    assert "modules are picked by type (`isinstance(m, nn.Dropout)`) where hooks are registered (line 8)" \
        in refusal.reason and "pkg/watch.py:6)" in refusal.reason


def test_modules_picked_by_type_without_a_hook_are_no_reason(tmp_path: Path) -> None:
    write_project(tmp_path, {"pkg/__init__.py": "", "pkg/attention.py": ATTENTION,
                             "pkg/watch.py": PICKED.replace("drop.register_forward_hook", "seen.append")})
    results = _tree(tmp_path / "pkg")
    assert not results["attention.py"].refusals
    assert "scaled_dot_product_attention" in results["attention.py"].migrated
