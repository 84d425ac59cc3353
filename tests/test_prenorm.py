"""TFM201 (post-norm -> pre-norm): goldens, noops, idempotence, and the legacy models end to end:
migrated with TFM201 (alone and after TFM101) they import, build, load the original weights
through the plan (strict except exactly the plan's new keys), and run forward and backward."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_module, manifest, meets_expectation, tensors
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import select_rules

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "fixtures" / "prenorm"
MODELS = ROOT / "fixtures" / "models"
SPECS = manifest()


def _run(text: str, path: str, select=("TFM201",)):
    result = migrate_source(text, path, [rule() for rule in select_rules(list(select))])
    assert not result.errors, result.errors
    return result


@pytest.mark.parametrize("before", sorted(FOLDER.glob("*.before.py")), ids=lambda p: p.name)
def test_golden_and_idempotent(before: Path) -> None:
    result = _run(before.read_text(), before.name)
    assert result.changed, result.refusals
    after = before.with_name(before.name.replace(".before.py", ".after.py"))
    assert result.migrated == after.read_text()
    again = _run(result.migrated, after.name)
    assert again.migrated == result.migrated and not again.edits and not again.refusals


@pytest.mark.parametrize("noop", sorted(FOLDER.glob("*.noop.py")), ids=lambda p: p.name)
def test_noop(noop: Path) -> None:
    result = _run(noop.read_text(), noop.name)
    assert result.migrated == noop.read_text() and not result.edits


def test_already_prenorm_is_reported_not_refused() -> None:
    result = _run((FOLDER / "already_prenorm.noop.py").read_text(), "already_prenorm.noop.py")
    assert result.notes and not result.refusals


def test_scaled_residual_is_refused_with_reason() -> None:
    result = _run((FOLDER / "scaled_residual.noop.py").read_text(), "scaled_residual.noop.py")
    assert any("scaled" in r.reason for r in result.refusals), result.refusals


def test_builtin_transformer_gets_norm_first_and_a_keyless_plan() -> None:
    """Instance and subclass: every old key loads strictly, every layer is pre-norm, it trains."""
    torch = pytest.importorskip("torch")
    name = "builtin_transformer.before.py"
    result = _run((FOLDER / name).read_text(), name)
    assert sorted(p.qualname for p in result.plans) == ["Seq2Seq", "Translator"]
    assert all(not p.new and not p.renamed and not p.dropped for p in result.plans)
    old = load_module(FOLDER / name)
    new = load_module(FOLDER / "builtin_transformer.after.py")
    for build, inputs in (("Translator(50)", (torch.randint(0, 50, (6, 2)), torch.randint(0, 50, (5, 2)))),
                          ("Seq2Seq()", (torch.randn(6, 2, 32), torch.randn(5, 2, 32)))):
        torch.manual_seed(0)
        before, after = eval(build, vars(old)), eval(build, vars(new))
        after.load_state_dict(before.state_dict(), strict=True)
        layers = [m for m in after.modules() if isinstance(m, (nn_layers := (torch.nn.TransformerEncoderLayer,
                                                                             torch.nn.TransformerDecoderLayer)))]
        assert layers and all(layer.norm_first for layer in layers)
        assert not any(m.norm_first for m in before.modules() if isinstance(m, nn_layers))
        out = after(*inputs)
        assert torch.isfinite(out).all()
        out.pow(2).mean().backward()
        assert all(p.grad is not None for p in after.parameters() if p.requires_grad)


def test_position_flag_is_noted_and_flip_turns_its_default(tmp_path) -> None:
    name = "normalize_before_flag.noop.py"
    text = (FOLDER / name).read_text()
    (note,) = _run(text, name).notes
    assert "pre-norm is available" in note.message and "self.normalize_before" in note.message
    rule = [cls({"flags": "flip"}) for cls in select_rules(("TFM201",))]
    flipped = migrate_source(text, name, rule)
    assert flipped.migrated == text.replace("normalize_before=False", "normalize_before=True")
    (plan,) = flipped.plans
    assert plan.qualname == "EncoderLayer" and not plan.new
    torch = pytest.importorskip("torch")
    target = tmp_path / "flipped.py"
    target.write_text(flipped.migrated)
    torch.manual_seed(0)
    old, new = load_module(FOLDER / name).Encoder(), load_module(target).Encoder()
    new.load_state_dict(old.state_dict(), strict=True)
    assert all(layer.normalize_before for layer in new.layers)
    out = new(torch.randn(2, 5, 32))
    assert torch.isfinite(out).all()
    out.pow(2).mean().backward()


def test_flag_options_are_checked() -> None:
    from tf_migrate.engine.run import UsageError

    with pytest.raises(UsageError, match="prenorm.flags"):
        [cls({"flags": "on"}) for cls in select_rules(("TFM201",))]


def test_optional_prenorm_sublayer_is_noted_not_refused() -> None:
    name = "optional_prenorm_sublayer.noop.py"
    result = _run((FOLDER / name).read_text(), name)
    assert not result.refusals and len(result.notes) == 3


def test_norm_under_another_flag_is_refused() -> None:
    name = "optional_norm_flag.noop.py"
    (refusal,) = _run((FOLDER / name).read_text(), name).refusals
    assert "applied under a condition" in refusal.reason


def test_builtin_transformer_with_custom_encoder_is_refused() -> None:
    name = "builtin_transformer_custom_encoder.noop.py"
    (refusal,) = _run((FOLDER / name).read_text(), name).refusals
    assert "custom encoder" in refusal.reason


def test_explain_says_fine_tune() -> None:
    out = subprocess.run([sys.executable, "-m", "tf_migrate", "explain", "TFM201"],
                         capture_output=True, text=True, check=True).stdout
    assert "compatible" in out and "fine-tuned afterwards" in out


@pytest.mark.parametrize("stem", sorted(SPECS))
def test_manifest_expectation(stem: str) -> None:
    expected = SPECS[stem].get("expect", {}).get("TFM201")
    result = _run((MODELS / f"{stem}.py").read_text(), f"{stem}.py")
    assert meets_expectation(expected, result, "TFM201"), (expected, result.edits, result.refusals)
    if expected == "apply":
        assert not any(r.code == "TFM201" for r in result.refusals), result.refusals
        again = _run(result.migrated, f"{stem}.py")  # every post-norm sublayer is gone
        assert not again.edits and not again.refusals, (again.edits, again.refusals)


def _plan_keys(model, plans, field: str) -> set[str]:
    """Plan keys (relative to a class) made absolute for every instance of that class."""
    keys = set()
    for plan in plans:
        for prefix, module in model.named_modules():
            if type(module).__qualname__ == plan.qualname:
                entries = [n.key for n in plan.new] if field == "new" else plan.dropped
                keys.update((f"{prefix}." if prefix else "") + key for key in entries)
    return keys


@pytest.mark.parametrize("select", [("TFM201",), ("TFM101", "TFM201")], ids="+".join)
@pytest.mark.parametrize("stem", sorted(SPECS))
def test_migrated_model_loads_and_trains(stem: str, select, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    spec, source = SPECS[stem], MODELS / f"{stem}.py"
    result = _run(source.read_text(), source.name, select)
    migrated = tmp_path / source.name
    migrated.write_text(result.migrated)
    before_module, after_module = load_module(source), load_module(migrated)
    namespace = lambda m: {**vars(m), "torch": torch}  # noqa: E731
    torch.manual_seed(0)
    before = eval(spec["build"], namespace(before_module))
    after = eval(spec["build"], namespace(after_module))

    state = before.state_dict()
    dropped = _plan_keys(before, result.plans, "dropped")
    new = _plan_keys(after, result.plans, "new")
    missing, unexpected = after.load_state_dict(
        {k: v for k, v in state.items() if k not in dropped}, strict=False)
    assert not unexpected
    assert set(missing) == new
    for key in new:  # identity init: ones for weights, zeros for biases
        value = after.state_dict()[key]
        assert torch.equal(value, torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value))

    after.train()
    for index, expression in enumerate(spec["inputs"]):
        torch.manual_seed(100 + index)
        args = eval(expression, namespace(before_module))
        args = args if isinstance(args, tuple) else (args,)
        after.zero_grad()
        outputs = [t for t in tensors(after(*args)) if t.requires_grad]
        sum(t.float().sum() for t in outputs).backward()
        grads = [p.grad for p in after.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    if any(e.code == "TFM201" for e in result.edits) and new:
        assert any(after.get_parameter(k).grad is not None for k in new if k.endswith("weight"))


_BLOCK = '''
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, d, f, g):
        super().__init__()
        self.f, self.g = f, g
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)

    def forward(self, x):
{body}


class Stack(nn.Module):
    def __init__(self, d, n, make):
        super().__init__()
        self.layers = nn.ModuleList([Block(d, *make()) for _ in range(n)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
'''


@pytest.mark.parametrize("body, reason", [
    ("        x = self.ln2(x + self.f(self.ln1(x)))\n        return x", "sandwich"),
    ("        x = self.ln1(x + self.f(x))\n        x = x + self.g(x)\n        return x", "no norm"),
    ("        y = self.f(x)\n        x = self.ln1(x + y)\n        return x, y", "also read"),
    ("        x = self.ln1(x + self.f(x)) * 2\n        return x", "whole value"),
    ("        y = self.f(x)\n        y += x\n        x = self.ln1(y)\n        return x, y", "is also read on line"),
], ids=["sandwich", "mixed-plain", "intermediate-reused", "norm-in-expression", "augmented-sum-reused"])
def test_unprovable_blocks_are_refused(body: str, reason: str) -> None:
    text = _BLOCK.format(body=body)
    result = _run(text, "block.py")
    assert result.migrated == text and not result.edits
    assert any(reason in r.reason for r in result.refusals), result.refusals


def test_stack_is_migrated_whole_or_not_at_all() -> None:
    text = _BLOCK.format(body="        x = self.ln1(x + self.f(x))\n        return x") + '''

class Other(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.f = nn.Linear(d, d)

    def forward(self, x):
        return self.ln(x + 0.5 * self.f(x))


class Layer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a = Block(d, None, None)
        self.b = Other(d)

    def forward(self, x):
        return self.b(self.a(x))


class Holder(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.blocks = nn.ModuleList([Layer(d) for _ in range(2)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x
'''
    result = _run(text, "mixed.py")
    assert any("scaled" in r.reason for r in result.refusals)
    assert not result.edits and result.migrated == text  # Block shares a stack with Other
    assert any("same stack was refused" in r.reason for r in result.refusals)


def test_own_norm_class_is_refused_unless_it_starts_at_identity() -> None:
    name = "own_norm_not_identity.noop.py"
    result = _run((FOLDER / name).read_text(), name)
    assert any("own class `LayerNorm`" in r.reason and "ones/zeros" in r.reason for r in result.refusals), \
        result.refusals
    assert result.notes  # the pre-norm block beside it is recognised


def test_builtin_stack_that_has_its_norm_only_flips_the_flag_and_names_the_class() -> None:
    name = "builtin_stack_with_norm.before.py"
    result = _run((FOLDER / name).read_text(), name)
    (edit,) = result.edits
    assert "already ends in a norm" in edit.message
    (plan,) = result.plans  # verify and convert learn which class TFM201 changed, though no key moves
    assert plan.qualname == "TextClassifier" and plan.rules == ["TFM201"] and not plan.new


@pytest.mark.parametrize("name, build, keys, calls", [
    ("augassign_residual", "Model()", {"weight": 1.0, "bias": 0.0}, ["(x,)"]),
    ("own_layernorm_class", "Stack(32, 2, lambda: torch.nn.Linear(32, 32))", {"a_2": 1.0, "b_2": 0.0}, ["(x,)"]),
    ("optional_postnorm_tuple_return", "Decoder()", {"weight": 1.0, "bias": 0.0},
     ["(x, torch.randn(2, 5, 32))", "(x, None)"]),
    ("layer_loop_lists", "Encoder()", {"weight": 1.0, "bias": 0.0}, ["(x,)", "(x, torch.ones(2, 6))"]),
    ("dropout_after_norm", "Classifier()", {"weight": 1.0, "bias": 0.0}, ["(x,)"]),
    ("chained_norm_assignment", "Mixer()", {"weight": 1.0, "bias": 0.0}, ["(x,)"]),
    ("block_class_chosen", "Relay()", {"weight": 1.0, "bias": 0.0}, ["(x,)"]),
    ("project_norm_alias", "Tower()", {"weight": 1.0, "bias": 0.0}, ["(x,)"]),
    ("returned_list_stream", "Decoder()", {"weight": 1.0, "bias": 0.0}, ["(x,)"]),
    ("layer_loop_collects", "Reader()", {"weight": 1.0, "bias": 0.0},
     ["(torch.randint(0, 50, (2, 6)), torch.tensor([[1.0] * 6, [1.0] * 4 + [0.0] * 2]))"]),
    ("block_class_chosen", "Relay(wide=True)", {"weight": 1.0, "bias": 0.0}, ["(x,)"]),
])
def test_golden_model_converts_strictly_and_trains(name: str, build: str, keys: dict, calls: list) -> None:
    """`out += x; x = self.n1(out)`, a norm class of the file's own, an optional post-norm
    sublayer and a tuple return: the migrated model loads the converted checkpoint with
    strict=True (the final norm at identity), runs every path and trains one step."""
    torch = pytest.importorskip("torch")
    from tf_migrate.convert.state_dict import convert_state_dict

    result = _run((FOLDER / f"{name}.before.py").read_text(), f"{name}.before.py")
    torch.manual_seed(0)
    old = eval(build, {**vars(load_module(FOLDER / f"{name}.before.py")), "torch": torch})
    new = eval(build, {**vars(load_module(FOLDER / f"{name}.after.py")), "torch": torch})
    state, _ = convert_state_dict(old.state_dict(), result.plans, new.state_dict())
    new.load_state_dict(state, strict=True)
    assert sorted(k for k in new.state_dict() if k.startswith("final_norm.")) == sorted(f"final_norm.{k}" for k in keys)
    for key, value in keys.items():
        assert torch.equal(new.get_parameter(f"final_norm.{key}"), torch.full((32,), value))
    new.train()
    optimiser = torch.optim.SGD(new.parameters(), lr=0.01)
    for call in calls:
        optimiser.zero_grad()
        args = eval(call, {"torch": torch, "x": torch.randn(2, 6, 32)})
        loss = next(iter(tensors(new(*args)))).pow(2).mean()
        loss.backward()
        optimiser.step()
        assert torch.isfinite(loss) and new.final_norm.get_parameter(next(iter(keys))).grad is not None


def test_norm_under_a_condition_with_an_else_is_refused() -> None:
    name = "optional_postnorm_else.noop.py"
    result = _run((FOLDER / name).read_text(), name)
    assert any("`memory is not None`" in r.reason and "an `else`" in r.reason for r in result.refusals), \
        result.refusals


def test_chained_norm_assignment_becomes_the_pre_norm_block() -> None:
    """`ff_in = x = norm(x)`: after the rewrite each layer computes x + attn(n1(x)), then
    x + ffn(n2(x)), and the stack ends in the final norm (checked against that formula)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    result = _run((FOLDER / "chained_norm_assignment.before.py").read_text(), "chained_norm_assignment.before.py")
    assert [e.message.split(":")[0] for e in result.edits] == ["MixerLayer", "Mixer"]
    torch.manual_seed(0)
    model = load_module(FOLDER / "chained_norm_assignment.after.py").Mixer().eval()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    model = model.double()
    stream = x
    for layer in model.layers:
        h = layer.first_norm(stream)
        stream = stream + layer.mix(h, h, h)[0]
        stream = stream + layer.narrow(F.gelu(layer.widen(layer.second_norm(stream))))
    with torch.no_grad():
        out, maps = model(x)
        torch.testing.assert_close(out, model.final_norm(stream))
    assert len(maps) == 2


def test_chained_norm_whose_second_name_is_returned_is_refused() -> None:
    name = "chained_norm_output_reused.noop.py"
    result = _run((FOLDER / name).read_text(), name)
    assert [(r.line, r.reason) for r in result.refusals] == [
        (18, "Layer: the output of `self.norm_a(x)` is also read outside the residual stream")]


@pytest.mark.parametrize("name, reason", [
    ("block_class_chosen_prenorm_choice", "PreBlock is not post-norm: it would gain a final norm it never had"),
    ("block_class_chosen_missing_norm", "OtherBlock has no `self.blocks[-1].final_mix` to size the final norm from"),
])
def test_block_class_chosen_at_run_time_is_refused_unless_every_choice_fits(name: str, reason: str) -> None:
    result = _run((FOLDER / f"{name}.noop.py").read_text(), f"{name}.noop.py")
    assert not result.edits
    assert any("chosen at run time" in r.reason and r.reason.endswith(reason) for r in result.refusals), result.refusals


def test_post_norm_blocks_run_side_by_side_are_refused_with_that_reason() -> None:
    name = "parallel_postnorm_branches.noop.py"
    result = _run((FOLDER / name).read_text(), name)
    assert [(r.line, r.reason) for r in result.refusals] == [(14, (
        "Expert is post-norm, but `self.experts` of Panel (line 20) runs these blocks side by side, each "
        "on its own input (line 24), not one after another: there is no last block whose output a final "
        "norm would close"))]


def test_norm_position_flag_is_read_before_the_residuals_and_through_a_base_class() -> None:
    """Every norm under `if self.norm_first:` / `else:` is "pre-norm available", though the
    residual reading cannot follow the block's if/else input; a subclass using its base's norm too."""
    name = "flag_chosen_opaque_residual.noop.py"
    result = _run((FOLDER / name).read_text(), name)
    assert not result.refusals and not result.edits
    assert [(n.line, n.message.split(":")[0]) for n in result.notes] == [
        (23, "CachedAttention"), (40, "GatedCachedAttention")]
    assert all("pre-norm is available: the norm position follows `self.norm_first`" in n.message
               for n in result.notes)


def test_a_loop_that_collects_each_block_output_is_refused() -> None:
    name = "stack_collects_stream.noop.py"
    result = _run((FOLDER / name).read_text(), name)
    assert [(r.line, r.reason) for r in result.refusals] == [(13, (
        "Step is post-norm, but the loop over `self.steps` of Trace also reads `x` after each block "
        "(line 26): the last block's output is taken there, before the final norm could close it"))]


def test_a_stream_returned_after_its_extras_is_refused() -> None:
    name = "returned_list_stream_not_first.noop.py"
    result = _run((FOLDER / name).read_text(), name)
    assert [(r.line, r.reason) for r in result.refusals] == [
        (14, "Layer: the output of `self.norm(x + self.inner(x))` is also read outside the residual stream")]


def test_a_model_loop_that_keeps_each_layer_output_is_refused() -> None:
    """Twin of layer_loop_collects: kept at the end of the loop body, the last layer's output
    would never pass the final norm."""
    name = "layer_loop_collects_output.noop.py"
    result = _run((FOLDER / name).read_text(), name)
    assert [(r.line, r.reason) for r in result.refusals] == [
        (38, "Reader: the output of `self.feed_norms[i](x)` is also read outside the residual stream")]
