"""TFM201 across files: attention and feed-forward classes that normalise their own output
(`norm(drop(out) + input)`), held by blocks in another file and stacked by a model in a third.
The sublayer's file moves the norm to the sublayer input, the stack's file adds the final norm;
a stack that cannot take a final norm leaves every file untouched (fixtures/prenorm/sublayer_norms)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine.file import FileResult, migrate_source
from tf_migrate.engine.registry import select_rules
from test_projects import _load  # import a package from a folder, leaving sys.modules as it was

FOLDER = Path(__file__).resolve().parent.parent / "fixtures" / "prenorm" / "sublayer_norms"


def _migrate(folder: Path) -> dict[str, FileResult]:
    files = sorted(folder.rglob("*.py"))
    project = ProjectIndex.for_files(files)
    rules = [rule() for rule in select_rules(["TFM201"])]
    results = {str(p.relative_to(folder)): migrate_source(p.read_text(), str(p), rules, project) for p in files}
    for result in results.values():
        assert not result.errors, result.errors
    return results


def test_golden_across_files_and_idempotent(tmp_path: Path) -> None:
    results = _migrate(FOLDER / "before")
    for relative, result in results.items():
        assert result.migrated == (FOLDER / "after" / relative).read_text(), relative
    assert {r for r, res in results.items() if res.changed} == {"speechnet/sublayers.py", "speechnet/model.py"}
    shutil.copytree(FOLDER / "after", tmp_path / "again")
    for result in _migrate(tmp_path / "again").values():
        assert not result.changed and not result.edits and not result.refusals


def test_a_stack_without_one_place_for_the_final_norm_leaves_every_file_alone() -> None:
    """The twin runs its encoder in two slices: the sublayers' file must not move a norm either."""
    results = _migrate(FOLDER / "noop")
    assert not any(r.changed or r.edits for r in results.values())
    reasons = [d.reason for r in results.values() for d in r.refusals]
    assert any("HeadedAttention" in r and "not run whole by one loop" in r for r in reasons), reasons
    assert any("self.encoder" in d.reason for d in results["speechnet/model.py"].refusals), reasons


def test_one_file_alone_is_not_migrated_half() -> None:
    """Run on the sublayers' file only, the stack's file is not part of the run: no edit there."""
    path = FOLDER / "before" / "speechnet" / "sublayers.py"
    result = migrate_source(path.read_text(), str(path), [rule() for rule in select_rules(["TFM201"])],
                            ProjectIndex.for_files([path]))
    assert not result.changed and len(result.refusals) == 2


def _copies(tmp_path: Path):
    results = _migrate(FOLDER / "before")
    before, after = tmp_path / "before", tmp_path / "after"
    shutil.copytree(FOLDER / "before", before)
    shutil.copytree(FOLDER / "before", after)
    for relative, result in results.items():
        (after / relative).write_text(result.migrated)
    return before, after, [plan for r in results.values() for plan in r.plans]


def test_migrated_model_loads_converted_checkpoint_strictly_and_trains(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tf_migrate.convert.state_dict import convert_state_dict

    before, after, plans = _copies(tmp_path)
    torch.manual_seed(0)
    old = _load(before, "speechnet.model").SpeechTransformer()
    new = _load(after, "speechnet.model").SpeechTransformer()
    state, _ = convert_state_dict(old.state_dict(), plans, new.state_dict())
    new.load_state_dict(state, strict=True)
    assert sorted(set(new.state_dict()) - set(old.state_dict())) == [
        "decoder_final_norm.bias", "decoder_final_norm.weight", "final_norm.bias", "final_norm.weight"]
    assert torch.equal(new.final_norm.weight, torch.ones(32)) and torch.equal(new.final_norm.bias, torch.zeros(32))
    src, tgt = torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 5))
    new.train()
    optimiser = torch.optim.SGD(new.parameters(), lr=0.01)
    loss = new(src, tgt).float().pow(2).mean()
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert torch.isfinite(new(src, tgt)).all()


def test_self_attention_reads_the_normalised_input_and_cross_attention_keeps_its_memory(tmp_path: Path) -> None:
    """`k = h if k is q else k`: q, k, v all normalised when the caller passes one tensor; the
    memory of cross-attention untouched. Checked against the original class with its norm removed
    (`x + f(norm(x))` computed by hand), in float64."""
    torch = pytest.importorskip("torch")
    before, after, _ = _copies(tmp_path)
    old_cls = _load(before, "speechnet.sublayers").HeadedAttention
    new_cls = _load(after, "speechnet.sublayers").HeadedAttention
    torch.manual_seed(3)
    new = new_cls(16, 2).double().eval()
    core = old_cls(16, 2).double().eval()
    core.load_state_dict(new.state_dict())
    core.norm = torch.nn.Identity()  # the original without its norm: merge(attn(q, k, v)) + q
    with torch.no_grad():
        new.norm.weight.uniform_(0.5, 1.5)
        new.norm.bias.uniform_(-0.5, 0.5)
    x, memory = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64)
    with torch.no_grad():
        h = new.norm(x)
        torch.testing.assert_close(new(x, x, x), x + core(h, h, h) - h, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(new(x, memory, memory), x + core(h, memory, memory) - h, rtol=1e-12, atol=1e-12)


def test_blocks_appended_to_a_local_list_in_another_file_get_their_final_norm(tmp_path: Path) -> None:
    """`blocks = []; blocks.append(Block(...)); self.blocks = nn.Sequential(*blocks)` in another
    file than the block: the block's file and the stack's file both change, or neither would."""
    from project_support import write_project

    write_project(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/block.py": """
            import torch.nn as nn


            class Block(nn.Module):
                def __init__(self, d):
                    super().__init__()
                    self.ff = nn.Linear(d, d)
                    self.norm = nn.LayerNorm(d)

                def forward(self, x):
                    return self.norm(x + self.ff(x))
            """,
        "pkg/model.py": """
            import torch.nn as nn

            from .block import Block


            class Model(nn.Module):
                def __init__(self, d=8, depth=2):
                    super().__init__()
                    blocks = []
                    for _ in range(depth):
                        blocks.append(Block(d))
                    self.blocks = nn.Sequential(*blocks)

                def forward(self, x):
                    x = self.blocks(x)
                    return x
            """,
    })
    results = _migrate(tmp_path)
    assert results["pkg/block.py"].migrated.count("return x + self.ff(self.norm(x))") == 1
    assert "self.final_norm = nn.LayerNorm(self.blocks[-1].norm.normalized_shape)" in results["pkg/model.py"].migrated
    assert "x = self.final_norm(x)" in results["pkg/model.py"].migrated


def test_own_norm_class_of_a_third_file_gives_a_copied_final_norm(tmp_path: Path) -> None:
    """A gamma/beta norm class in its own file, used by a post-norm block in another, stacked in a
    third: the stack's file copies the last block's norm (`import copy` added), the plan lists the
    class's own parameter names at ones/zeros, and the converted checkpoint loads strictly."""
    torch = pytest.importorskip("torch")
    from project_support import write_project
    from tf_migrate.convert.state_dict import convert_state_dict

    write_project(tmp_path, {
        "net/__init__.py": "",
        "net/norm.py": """
            import torch
            import torch.nn as nn


            class ScaleNorm(nn.Module):
                def __init__(self, d, eps=1e-6):
                    super().__init__()
                    self.gamma = nn.Parameter(torch.ones(d))
                    self.beta = nn.Parameter(torch.zeros(d))
                    self.eps = eps

                def forward(self, x):
                    mean = x.mean(-1, keepdim=True)
                    var = x.var(-1, unbiased=False, keepdim=True)
                    return self.gamma * (x - mean) / torch.sqrt(var + self.eps) + self.beta
            """,
        "net/block.py": """
            import torch.nn as nn

            from net.norm import ScaleNorm


            class Block(nn.Module):
                def __init__(self, d):
                    super().__init__()
                    self.ff = nn.Linear(d, d)
                    self.norm = ScaleNorm(d)

                def forward(self, x):
                    skip = x
                    x = self.ff(x)
                    x = self.norm(x + skip)
                    return x
            """,
        "net/model.py": """
            import torch.nn as nn

            from net.block import Block


            class Model(nn.Module):
                def __init__(self, d=8, depth=2):
                    super().__init__()
                    self.layers = nn.ModuleList([Block(d) for _ in range(depth)])

                def forward(self, x):
                    for layer in self.layers:
                        x = layer(x)
                    return x
            """,
    })
    results = _migrate(tmp_path)
    model = results["net/model.py"]
    shutil.copytree(tmp_path / "net", tmp_path / "after" / "net")
    assert "import copy\n" in model.migrated and "self.final_norm = copy.deepcopy(self.layers[-1].norm)" in model.migrated
    assert [(k.key, k.init) for p in model.plans for k in p.new] == [("final_norm.gamma", "ones"), ("final_norm.beta", "zeros")]
    assert "x = self.ff(self.norm(x))" in results["net/block.py"].migrated
    before = _load(tmp_path, "net.model").Model()
    for relative, result in results.items():
        (tmp_path / "after" / relative).write_text(result.migrated)
    after = _load(tmp_path / "after", "net.model").Model()
    state, _ = convert_state_dict(before.state_dict(), [p for r in results.values() for p in r.plans], after.state_dict())
    after.load_state_dict(state, strict=True)
    assert torch.equal(after.final_norm.gamma, torch.ones(8)) and torch.isfinite(after(torch.randn(2, 3, 8))).all()


def test_a_skipped_sublayer_class_keeps_the_stack_without_final_norm(tmp_path: Path) -> None:
    """`# tf-migrate: skip[TFM201]` on the attention class: its file is not rewritten, so the
    stack's file must not add a final norm either (refused, naming the skipped class)."""
    shutil.copytree(FOLDER / "before", tmp_path / "p")
    path = tmp_path / "p" / "speechnet" / "sublayers.py"
    path.write_text(path.read_text().replace("class HeadedAttention(nn.Module):",
                                             "class HeadedAttention(nn.Module):  # tf-migrate: skip[TFM201]"))
    results = _migrate(tmp_path / "p")
    assert not any(r.changed for r in results.values())
    assert any("HeadedAttention" in d.reason and "skipped" in d.reason for d in results["speechnet/model.py"].refusals)


_CHOSEN = {
    "pkg/__init__.py": "",
    "pkg/parts.py": """
        import torch.nn as nn


        class SelfMix(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
                self.norm = nn.LayerNorm(d)

            def forward(self, q, k, v):
                kept = q
                out = self.attn(q, k, v)[0]
                return self.norm(kept + out)


        class Widen(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.up = nn.Linear(d, 2 * d)
                self.down = nn.Linear(2 * d, d)
                self.norm = nn.LayerNorm(d)

            def forward(self, x):
                return self.norm(x + self.down(self.up(x).relu()))
        """,
    "pkg/layers.py": """
        import torch.nn as nn

        from .parts import SelfMix, Widen


        class FullLayer(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.mix = SelfMix(d)
                self.ff = Widen(d)

            def forward(self, x):
                return self.ff(self.mix(x, x, x))


        class LightLayer(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.ff = Widen(d)

            def forward(self, x):
                return self.ff(x)
        """,
    "pkg/model.py": """
        import torch.nn as nn

        from .layers import FullLayer, LightLayer


        class Model(nn.Module):
            def __init__(self, d=8, depth=2, light=False):
                super().__init__()
                self.layer_class = LightLayer if light else FullLayer
                self.layers = nn.ModuleList([self.layer_class(d) for _ in range(depth)])

            def forward(self, x):
                for layer in self.layers:
                    x = layer(x)
                return x
        """,
}


@pytest.mark.parametrize("light", [False, True])
def test_layer_class_chosen_at_build_time_across_files(tmp_path: Path, light: bool) -> None:
    """`self.layer_class = LightLayer if light else FullLayer` builds the stack: every choice holds
    post-norm sublayers of a third file, so they move their norms and the stack gets one final
    norm, sized from `ff.norm`, which both choices have; both builds load the converted
    checkpoint strictly and train."""
    torch = pytest.importorskip("torch")
    from project_support import write_project
    from tf_migrate.convert.state_dict import convert_state_dict

    (tmp_path / "before").mkdir()
    write_project(tmp_path / "before", _CHOSEN)
    results = _migrate(tmp_path / "before")
    assert "return kept + out" in results["pkg/parts.py"].migrated
    assert "self.final_norm = nn.LayerNorm(self.layers[-1].ff.norm.normalized_shape)" in results["pkg/model.py"].migrated
    assert not results["pkg/layers.py"].changed
    shutil.copytree(tmp_path / "before", tmp_path / "after")
    for relative, result in results.items():
        (tmp_path / "after" / relative).write_text(result.migrated)
    plans = [plan for r in results.values() for plan in r.plans]
    torch.manual_seed(0)
    old = _load(tmp_path / "before", "pkg.model").Model(light=light)
    new = _load(tmp_path / "after", "pkg.model").Model(light=light)
    state, _ = convert_state_dict(old.state_dict(), plans, new.state_dict())
    new.load_state_dict(state, strict=True)
    x = torch.randn(2, 5, 8)
    loss = new(x).pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss) and new.final_norm.weight.grad is not None


def test_a_project_class_named_like_a_builtin_layer_is_no_builtin_component(tmp_path: Path) -> None:
    """`from .layer import TransformerEncoderLayer`, the project's own class: the census reads it
    as any block (its file), not as torch's built-in layer with no outcome."""
    from project_support import write_project

    write_project(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/layer.py": """
            import torch.nn as nn


            class TransformerEncoderLayer(nn.Module):
                def __init__(self, d):
                    super().__init__()
                    self.ff = nn.Linear(d, d)
                    self.norm = nn.LayerNorm(d)

                def forward(self, x):
                    return x + self.ff(self.norm(x))
            """,
        "pkg/model.py": """
            import torch.nn as nn

            from .layer import TransformerEncoderLayer


            class Model(nn.Module):
                def __init__(self, d=8, depth=2):
                    super().__init__()
                    self.layers = nn.ModuleList([TransformerEncoderLayer(d) for _ in range(depth)])

                def forward(self, x):
                    for layer in self.layers:
                        x = layer(x)
                    return x
            """,
    })
    results = _migrate(tmp_path)
    assert not [c for r in results.values() for c in r.components if c.kind == "builtin-layer"]
    assert not any(r.changed or r.refusals for r in results.values())
