"""TFM201 for BERT-style output classes (`norm(drop(dense(h)) + r)` with `r` passed in by the
caller): the callers normalise the sublayer input with the output class's own norm, the output
class returns the plain sum, each stack gets a final norm; refused whole when any caller does
something else (rules/prenorm/caller_residual.py; fixtures/prenorm/caller_residual*)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import load_module
from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine.file import FileResult, migrate_source
from tf_migrate.engine.registry import select_rules
from test_prenorm_tree import _migrate  # every file of a folder through TFM201 with one project index
from test_projects import _load  # import a package from a folder, leaving sys.modules as it was

PRENORM = Path(__file__).resolve().parent.parent / "fixtures" / "prenorm"
FOLDER = PRENORM / "caller_residual"


def _one(name: str) -> FileResult:
    path = PRENORM / name
    return migrate_source(path.read_text(), str(path), [rule() for rule in select_rules(["TFM201"])],
                          ProjectIndex.for_files([path]))


def test_golden_across_files_and_idempotent(tmp_path: Path) -> None:
    results = _migrate(FOLDER / "before")
    for relative, result in results.items():
        assert result.migrated == (FOLDER / "after" / relative).read_text(), relative
    assert {r for r, res in results.items() if res.changed} == {"relay/pieces.py", "relay/layer.py", "relay/model.py"}
    shutil.copytree(FOLDER / "after", tmp_path / "again")
    for result in _migrate(tmp_path / "again").values():
        assert not result.changed and not result.edits and not result.refusals


def test_one_file_alone_is_not_migrated_half() -> None:
    """Run on the output classes' file only, no caller is in the run: refused, nothing changed."""
    path = FOLDER / "before" / "relay" / "pieces.py"
    result = migrate_source(path.read_text(), str(path), [rule() for rule in select_rules(["TFM201"])],
                            ProjectIndex.for_files([path]))
    assert not result.changed and not result.edits
    assert [r.line for r in result.refusals] == [32] and "not inside a stack" in result.refusals[0].reason


def test_a_caller_file_the_rule_does_not_run_on_leaves_every_file_alone(tmp_path: Path) -> None:
    """The attention unit moved to a file with no trigger word: its run would not normalise the
    sublayer input, so the output class and the stack must not change either."""
    shutil.copytree(FOLDER / "before", tmp_path / "p")
    layer = tmp_path / "p" / "relay" / "layer.py"
    text = layer.read_text()
    unit = text[text.index("class AttentionUnit"):text.index("class TransformerLayer")]
    layer.write_text(text.replace(unit, "").replace("from relay.attention import Core",
                                                    "from relay.unit import AttentionUnit"))
    (tmp_path / "p" / "relay" / "unit.py").write_text(
        "import torch.nn as nn\n\nfrom relay.attention import Core\nfrom relay.pieces import OutProj\n\n\n" + unit.rstrip() + "\n")
    results = _migrate(tmp_path / "p")
    assert not any(r.changed or r.edits for r in results.values())
    reasons = [d.reason for d in results["relay/pieces.py"].refusals]
    assert any("AttentionUnit" in r and "skipped there" in r for r in reasons), reasons


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
    old = _load(before, "relay.model").RelayModel()
    new = _load(after, "relay.model").RelayModel()
    state, _ = convert_state_dict(old.state_dict(), plans, new.state_dict())
    new.load_state_dict(state, strict=True)
    assert sorted(set(new.state_dict()) - set(old.state_dict())) == ["encoder.final_norm.bias", "encoder.final_norm.weight"]
    assert torch.equal(new.encoder.final_norm.weight, torch.ones(32))
    assert torch.equal(new.encoder.final_norm.bias, torch.zeros(32))
    ids, memory = torch.randint(0, 60, (2, 7)), torch.randn(2, 5, 32)
    new.train()
    optimiser = torch.optim.SGD(new.parameters(), lr=0.01)
    loss = new(ids, memory).pow(2).mean()
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert torch.isfinite(new(ids, memory)).all() and torch.isfinite(new(ids)).all()


def test_each_sublayer_reads_its_normalised_input_and_cross_attention_keeps_its_memory(tmp_path: Path) -> None:
    """The migrated block, in float64, against the pre-norm composition computed by hand from the
    original classes with their norms removed: y1 = x + A(n1(x)); y2 = y1 + C(n2(y1), memory);
    y3 = y2 + F(n3(y2)), with the feed-forward run in chunks."""
    torch = pytest.importorskip("torch")
    before, after, _ = _copies(tmp_path)
    old_cls = _load(before, "relay.layer").TransformerLayer
    new_cls = _load(after, "relay.layer").TransformerLayer
    torch.manual_seed(5)
    new = new_cls(16, 2, 24, cross=True, chunk=2).double().eval()
    core = old_cls(16, 2, 24, cross=True, chunk=0).double().eval()
    core.load_state_dict(new.state_dict())
    with torch.no_grad():
        for norm in (new.attend.out.norm, new.cross.out.norm, new.out.norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    for unit in (core.attend.out, core.cross.out, core.out):
        unit.norm = torch.nn.Identity()  # the original's projection back without its norm: proj(h) + r
    x, memory = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64)
    with torch.no_grad():
        h = new.attend.out.norm(x)
        y1 = x + core.attend(h)[0] - h
        h = new.cross.out.norm(y1)
        y2 = y1 + core.cross(h, memory)[0] - h
        y3 = y2 + core.out(core.widen(new.out.norm(y2)), torch.zeros_like(y2))
        torch.testing.assert_close(new(x, memory)[0], y3, rtol=1e-12, atol=1e-12)
        unit_expected = x + core.attend(new.attend.out.norm(x), memory)[0] - new.attend.out.norm(x)
        torch.testing.assert_close(new.attend(x, memory)[0], unit_expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["caller_residual_encoder", "caller_residual_fused_fallback", "bert_split_modules"])
def test_one_file_models_build_load_and_train(name: str) -> None:
    torch = pytest.importorskip("torch")
    from tf_migrate.convert.state_dict import convert_state_dict

    result = _one(f"{name}.before.py")
    assert result.migrated == (PRENORM / f"{name}.after.py").read_text()
    old_module, new_module = load_module(PRENORM / f"{name}.before.py"), load_module(PRENORM / f"{name}.after.py")
    build, inputs = {
        "caller_residual_encoder": ("Tower()", (torch.randint(0, 50, (2, 9)), torch.randn(2, 4, 32))),
        "caller_residual_fused_fallback": ("Trunk()", (torch.randn(2, 5, 16),)),
        "bert_split_modules": ("Encoder(lambda: torch.nn.Linear(16, 16), 16, 2)", None),
    }[name]
    if inputs is None:  # the attention is passed in: a Linear that ignores the mask stands for it
        build = build.replace("torch.nn.Linear(16, 16)", "Masked()")
        namespace = {"torch": torch, "Masked": type("Masked", (torch.nn.Linear,), {
            "__init__": lambda self: torch.nn.Linear.__init__(self, 16, 16),
            "forward": lambda self, x, mask: torch.nn.Linear.forward(self, x)})}
        inputs = (torch.randn(2, 5, 16), None)
    else:
        namespace = {}
    torch.manual_seed(0)
    old = eval(build, {**vars(old_module), **namespace})
    new = eval(build, {**vars(new_module), **namespace})
    state, _ = convert_state_dict(old.state_dict(), result.plans, new.state_dict())
    new.load_state_dict(state, strict=True)
    assert sorted(set(new.state_dict()) - set(old.state_dict())) == ["final_norm.bias", "final_norm.weight"]
    assert torch.equal(new.final_norm.weight, torch.ones_like(new.final_norm.weight))
    new.train()
    loss = new(*inputs).pow(2).mean()
    loss.backward()
    torch.optim.SGD(new.parameters(), lr=0.01).step()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name, reason", [
    ("caller_residual_not_the_input.noop.py", "is not computed from `origin`: the residual is not the sublayer's own input"),
    ("caller_residual_stream_reread.noop.py", "is read on line 24 outside the sublayers and residuals"),
    ("caller_residual_same_memory.noop.py", "passes the stream `x` also as `memory`"),
    ("caller_residual_unstacked.noop.py", "Back in Sublayer in Pool in Encoder"),
    ("caller_residual_stack_in_parts.noop.py", "is not run whole by one loop in forward"),
])
def test_refusals_name_the_caller_that_breaks_the_rewrite(name: str, reason: str) -> None:
    result = _one(name)
    assert not result.changed and not result.edits
    assert [r.line for r in result.refusals] == [13 if "same_memory" not in name else 15]
    assert reason in result.refusals[0].reason and "caller passes in" in result.refusals[0].reason


@pytest.mark.parametrize("skipped", ["Back", "Trunk"])
def test_a_skipped_class_of_the_component_leaves_the_whole_component_alone(skipped: str, tmp_path: Path) -> None:
    """`# tf-migrate: skip[TFM201]` on the output class or on the stack's class: nothing changes;
    the skipped output class itself is not reported, the other one says why."""
    text = (PRENORM / "caller_residual_fused_fallback.before.py").read_text()
    path = tmp_path / "model.py"
    path.write_text(text.replace(f"class {skipped}(nn.Module):", f"class {skipped}(nn.Module):  # tf-migrate: skip[TFM201]"))
    result = migrate_source(path.read_text(), str(path), [rule() for rule in select_rules(["TFM201"])],
                            ProjectIndex.for_files([path]))
    assert not result.changed and not result.edits
    if skipped == "Back":
        assert not result.refusals
    else:
        assert [r.line for r in result.refusals] == [20] and "Trunk (model.py) holds the stack but is skipped" in result.refusals[0].reason
