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


def _walked(project, owner, path: str, tree, name: str, kinds, module_types) -> list:
    """The reference: `_file_consumers` as one walk of the whole file per question."""
    import ast

    from tf_migrate.analysis import contracts

    text = project.text(path) or ""
    outer = {id(f) for f in contracts.outer_functions(tree.body)} if "key" in kinds and "assert" in text else set()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or id(node) in outer:
            found += contracts.node_consumers(project, path, node, name, kinds, module_types)

    def attributes(body, inherits: bool, prefix: str = "") -> None:
        for statement in body:
            if isinstance(statement, ast.ClassDef):
                symbol = project.class_symbol(path, prefix + statement.name)
                derives = owner is not None and symbol is not None and owner in project.ancestors(symbol)
                attributes(statement.body, derives, prefix + statement.name + ".")
                continue
            found.extend(contracts.Consumer(path, node.lineno, f"`{ast.unparse(node)}` reaches `{name}`")
                         for node in ast.walk(statement) if isinstance(node, ast.Attribute) and node.attr == name
                         and (inherits or contracts.dotted_text(node.value) != "self"))

    if "attribute" in kinds and path != getattr(owner, "path", None) and name in text:
        attributes(tree.body, False)
    return found


def _questions(tree) -> set[str]:
    """Every name a fixture's questions can be about: attributes, and strings whole and split at dots."""
    import ast

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 60:
            names |= {node.value, *node.value.split(".")}
    return names


def test_file_facts_answer_as_the_whole_file_walk_on_every_fixture() -> None:
    from tf_migrate.analysis import contracts
    from tf_migrate.analysis.project import ProjectIndex

    files = sorted(Path(__file__).resolve().parent.parent.joinpath("fixtures").rglob("*.py"))
    project = ProjectIndex.for_files(files)
    kinds = frozenset({"hook", "key", "string", "attribute"})
    types = frozenset({"torch.nn.Dropout", "torch.nn.Linear"})
    asked = 0
    for path in map(str, project.files):
        summary = project.summary(path)
        if summary is None:
            continue
        owners = [None] + [project.class_symbol(path, q) for q in list(summary.classes)[:1]]
        for name in sorted(_questions(summary.tree)):
            for owner in owners:
                got = list(contracts._file_consumers(project, owner, path, summary.tree, name, kinds, types))
                assert got == _walked(project, owner, path, summary.tree, name, kinds, types), (path, name)
                asked += 1
    assert asked > 1000


def test_a_changed_file_is_not_answered_from_the_facts_of_its_old_text(tmp_path: Path) -> None:
    import ast

    from tf_migrate.analysis import contracts

    project = write_project(tmp_path, FILES)
    tools = str(tmp_path / "pkg" / "tools.py")

    def answers(name: str) -> list[tuple[int, str]]:
        summary = project.summary(tools)
        return sorted((c.line, c.what) for c in contracts._file_consumers(project, None, tools, summary.tree, name,
                                                                     {"string"}, frozenset()))

    assert answers("query") == [(20, "`model.get_submodule` looks up `query` by name"),
                                (22, "a list of names includes 'query'")]
    tree = project.summary(tools).tree
    assert contracts._facts(tree) is contracts._facts(tree)  # one walk per tree, not one per question
    text = project.text(tools).replace('"block.query"', '"block.value"')
    project.add(tools, text, ast.parse(text))
    assert answers("query") == [(22, "a list of names includes 'query'")]
    text = text.replace('["query", "value"]', '["key"]')
    project.add(tools, text)  # no tree given: the index parses it again
    assert answers("query") == []
    assert answers("value") == [(20, "`model.get_submodule` looks up `value` by name")]
