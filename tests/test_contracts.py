"""consumers_of: hooks, key counts, key strings, look-ups by name and attribute uses elsewhere in the
tree; uses inside the owner class are not consumers."""

from __future__ import annotations

from pathlib import Path

from tf_migrate.analysis.contracts import consumers_of

from project_support import write_project

FILES = {
    "pkg/__init__.py": "",
    "pkg/attn.py": """
        import torch.nn as nn

        class Attention(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn_drop = nn.Dropout(0.1)
                self.query = nn.Linear(4, 4)
                self.register_buffer("mask", None)

            def forward(self, x):
                return self.attn_drop(self.query(x))

        class Other(nn.Module):
            def __init__(self):
                super().__init__()
                self.query = nn.Linear(4, 4)

            def forward(self, x):
                return self.query(x)
        """,
    "pkg/tools.py": """
        import torch.nn as nn

        def by_name(model):
            for name, module in model.named_modules():
                if name.endswith("attn_drop"):
                    module.register_forward_hook(print)

        def by_type(model):
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.register_forward_pre_hook(print)

        def everything(model):
            for module in model.modules():
                module.register_forward_hook(print)

        def direct(model):
            model.block.attn_drop.register_forward_hook(print)
            return getattr(model.block, "attn_drop"), model.get_submodule("block.query")

        LORA_TARGETS = ["query", "value"]

        def load(model, published):
            keys = list(model.state_dict().keys())
            assert len(keys) == len(published)
            return [k for k in keys if not k.endswith(".mask")]

        def peek(model):
            return model.block.query.weight
        """,
}


def _consumers(tmp_path: Path, name: str, kinds: set[str], types=frozenset()) -> set[tuple[str, int, str]]:
    project = write_project(tmp_path, FILES)
    owner = project.class_symbol(str(tmp_path / "pkg" / "attn.py"), "Attention")
    return {(Path(c.path).name, c.line, c.what) for c in consumers_of(project, owner, name, kinds, types)}


def test_hooks_on_the_attribute_by_name_by_type_and_on_every_module(tmp_path: Path) -> None:
    found = _consumers(tmp_path, "attn_drop", {"hook"}, frozenset({"torch.nn.Dropout"}))
    assert found == {
        ("tools.py", 7, "hooks are registered on modules whose name matches 'attn_drop'"),
        ("tools.py", 12, "hooks are registered on every `nn.Dropout` module"),
        ("tools.py", 16, "hooks are registered on every module"),
        ("tools.py", 19, "a hook is registered on `.attn_drop`"),
    }


def test_a_type_filter_for_another_type_is_no_consumer(tmp_path: Path) -> None:
    found = _consumers(tmp_path, "attn_drop", {"hook"}, frozenset({"torch.nn.Softmax"}))
    assert ("tools.py", 12, "hooks are registered on every `nn.Dropout` module") not in found


def test_key_counts_key_strings_and_lookups_by_name(tmp_path: Path) -> None:
    found = _consumers(tmp_path, "mask", {"key", "string"})
    assert found == {("tools.py", 26, "`load` counts the state_dict keys"),
                     ("tools.py", 27, "the string '.mask' names `mask`")}
    by_name = _consumers(tmp_path, "query", {"string"})
    assert by_name == {("tools.py", 20, "`model.get_submodule` looks up `query` by name"),
                       ("tools.py", 22, "a list of names includes 'query'")}


def test_attribute_uses_in_other_files_but_not_the_owners_or_another_class_own(tmp_path: Path) -> None:
    found = _consumers(tmp_path, "query", {"attribute"})
    assert found == {("tools.py", 30, "`model.block.query` reaches `query`")}
    assert _consumers(tmp_path, "attn_drop", {"string"}) == {
        ("tools.py", 20, "`getattr` looks up `attn_drop` by name")}
