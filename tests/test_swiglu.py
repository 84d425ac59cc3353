"""TFM301 [swiglu]: goldens, noops, options, and the legacy models end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import load_module, manifest, meets_expectation
from tf_migrate.cli import main
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import select_rules

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "swiglu"
MODELS = ROOT / "fixtures" / "models"
MANIFEST = manifest()


def _rules(*codes: str, **options):
    return [cls(options if cls.code == "TFM301" else None) for cls in select_rules(codes)]


def _run(path: Path, *codes: str, **options):
    return migrate_source(path.read_text(), str(path), _rules(*(codes or ("TFM301",)), **options))


@pytest.mark.parametrize("before", sorted(FIXTURES.glob("*.before.py")), ids=lambda p: p.name)
def test_golden_and_idempotent(before: Path) -> None:
    result = _run(before)
    assert not result.errors and result.edits
    assert result.migrated == before.with_name(before.name.replace(".before", ".after")).read_text()
    again = migrate_source(result.migrated, str(before), _rules("TFM301"))
    assert again.migrated == result.migrated and not again.edits


@pytest.mark.parametrize("noop", sorted(FIXTURES.glob("*.noop.py")), ids=lambda p: p.name)
def test_noop(noop: Path) -> None:
    result = _run(noop)
    assert not result.errors and not result.edits
    assert result.migrated == noop.read_text()


def test_builtin_layer_refused_with_reason() -> None:
    (refusal,) = _run(FIXTURES / "builtin_layer.noop.py").refusals
    assert "no gated feed-forward" in refusal.reason and 'glu' in refusal.reason


def test_builtin_transformer_refused_with_reason() -> None:
    (refusal,) = _run(FIXTURES / "builtin_transformer.noop.py").refusals
    assert refusal.reason.startswith("nn.Transformer has no gated feed-forward")


def test_plan_same_maps_w1_w2_and_lists_w3() -> None:
    plans = _run(FIXTURES / "attribute_relu.before.py").plans
    (plan,) = plans
    assert plan.qualname == "FeedForward" and not plan.renamed and not plan.dropped
    assert [(k.key, k.shape) for k in plan.new] == [("fc3.weight", ["d_ff", "d_model"]), ("fc3.bias", ["d_ff"])]


def test_plan_sequential_renames_indices() -> None:
    (plan,) = _run(FIXTURES / "sequential_torch_relu.before.py").plans
    assert plan.renamed == {"net.0.weight": "net.0.w1.weight", "net.0.bias": "net.0.w1.bias",
                            "net.3.weight": "net.0.w2.weight", "net.3.bias": "net.0.w2.bias"}
    assert [k.key for k in plan.new] == ["net.0.w3.weight", "net.0.w3.bias"]


def test_param_matched_resizes_and_maps_nothing() -> None:
    result = _run(FIXTURES / "attribute_relu.before.py", hidden="param-matched", **{"multiple-of": 16})
    assert "ffn_hidden = (2 * d_ff // 3 + 15) // 16 * 16" in result.migrated
    assert "self.fc2 = nn.Linear(ffn_hidden, d_model)" in result.migrated
    (plan,) = result.plans
    assert not plan.renamed and plan.dropped == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert {k.key for k in plan.new} == {f"{n}.{p}" for n in ("fc1", "fc2", "fc3") for p in ("weight", "bias")}


def test_param_matched_refuses_raw_parameters() -> None:
    result = _run(FIXTURES / "raw_params.before.py", hidden="param-matched")
    assert not result.edits and "param-matched" in result.refusals[0].reason


def test_pointwise_conv_plan_has_the_kernel_dimension() -> None:
    (plan,) = _run(FIXTURES / "pointwise_conv_ffn.before.py").plans
    assert [(k.key, k.shape) for k in plan.new] == [("conv3.weight", ["d_ff", "d_model", "1"]), ("conv3.bias", ["d_ff"])]
    result = _run(FIXTURES / "pointwise_conv_ffn.before.py", hidden="param-matched")
    (plan,) = result.plans
    assert ("conv1.weight", ["(2 * d_ff // 3 + 7) // 8 * 8", "d_model", "1"]) in [(k.key, k.shape) for k in plan.new]


def test_match_option_gates_gelu_ffns_with_gelu() -> None:
    gelus = _run(FIXTURES / "file_local_gelu.before.py", ffn="match")
    assert gelus.migrated.count("F.gelu(") == 2 and "F.silu(" not in gelus.migrated
    assert all("(geglu," in e.message for e in gelus.edits)
    mixed = _run(FIXTURES / "activation_by_config.before.py", ffn="match")  # relu or gelu: not a GELU
    assert mixed.migrated.count("F.silu(") == 2 and all("(swiglu," in e.message for e in mixed.edits)
    text = (FIXTURES / "attention_heads_in_modulelist.before.py").read_text().replace("nn.ReLU()", "nn.GELU()")
    sequential = migrate_source(text, "model.py", _rules("TFM301", ffn="match"))
    assert "class GeGLUFeedForward(nn.Module)" in sequential.migrated
    assert "SwiGLUFeedForward" not in sequential.migrated


def test_geglu_option() -> None:
    result = _run(FIXTURES / "attribute_relu.before.py", ffn="geglu")
    assert "F.gelu(self.fc1(x)) * self.fc3(x)" in result.migrated


_REFUSED_INPUTS = {
    "expression input": "return self.fc2(F.relu(self.fc1(self.ln(x))))",
    "hidden reused": "h = F.relu(self.fc1(x))\n        self.last = h\n        return self.fc2(h)",
}


@pytest.mark.parametrize("body", list(_REFUSED_INPUTS.values()), ids=list(_REFUSED_INPUTS))
def test_unsafe_chains_are_refused(body: str) -> None:
    text = (FIXTURES / "attribute_relu.before.py").read_text().replace(
        "return self.fc2(self.drop(F.relu(self.fc1(x))))  # the FFN", body)
    result = migrate_source(text, "model.py", _rules("TFM301"))
    assert not result.edits and result.refusals and result.migrated == text


def _cli(tmp_path: Path, *args: str, config: str = "") -> tuple[int, str]:
    source = tmp_path / "model.py"
    source.write_text((FIXTURES / "attribute_relu.before.py").read_text())
    (tmp_path / "pyproject.toml").write_text(config)
    out = CliRunner().invoke(main, [str(source), "--select", "TFM301", "--diff", *args])
    return out.exit_code, out.output


@pytest.mark.parametrize("args, config", [
    (["--ffn", "geglu", "--ffn-hidden", "param-matched"], ""),
    (["--option", "swiglu.ffn=geglu", "--option", "swiglu.hidden=param-matched"], ""),
    ([], '[tool.tf-migrate.swiglu]\nffn = "geglu"\nhidden = "param-matched"\n'),
])
def test_option_plumbing(tmp_path: Path, args, config) -> None:
    code, output = _cli(tmp_path, *args, config=config)
    assert code == 1, output
    assert "F.gelu(self.fc1(x))" in output and "ffn_hidden" in output


def test_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    code, output = _cli(tmp_path, "--option", "swiglu.ffn=relu")
    assert code == 2 and "swiglu" in output


def test_explain_says_retrain() -> None:
    output = CliRunner().invoke(main, ["explain", "TFM301"]).output
    assert "retrain" in output and "MUST BE FINE-TUNED OR RETRAINED" in output


# End to end: every legacy model, migrated, still imports, builds, loads its mapped checkpoint
# (strict except the plan's new keys) and runs forward and backward.

torch = pytest.importorskip("torch")


def _load(path: Path, name: str, text: str):
    target = path / f"{name}.py"
    target.write_text(text)
    return load_module(target)


def _map_state(old: dict, model, module, plans) -> tuple[dict, set]:
    """Apply the class plans under every prefix where an instance of the class lives."""
    mapped, new = dict(old), set()
    for prefix, sub in model.named_modules():
        for plan in plans:
            if type(sub).__module__ == module.__name__ and type(sub).__qualname__ == plan.qualname:
                base = f"{prefix}." if prefix else ""
                for key in plan.dropped:
                    mapped.pop(base + key, None)
                for src, dst in plan.renamed.items():
                    mapped[base + dst] = mapped.pop(base + src)
                new.update(base + k.key for k in plan.new)
    return mapped, new


def _output_tensor(out):
    return out if isinstance(out, torch.Tensor) else _output_tensor(out[0])


@pytest.mark.parametrize("codes", [("TFM301",), ("TFM101", "TFM301")], ids=lambda c: "+".join(c))
@pytest.mark.parametrize("hidden", ["same", "param-matched"])
@pytest.mark.parametrize("stem", sorted(MANIFEST), ids=str)
def test_models_end_to_end(tmp_path: Path, stem: str, codes, hidden: str) -> None:
    entry = MANIFEST[stem]
    path = MODELS / f"{stem}.py"
    result = _run(path, *codes, hidden=hidden)
    assert not result.errors
    ours = [e for e in result.edits if e.code == "TFM301"]
    expect = entry["expect"]["TFM301"]
    assert meets_expectation(expect, result, "TFM301"), (expect, result.edits, result.refusals)
    if ours:
        assert result.migrated.count("F.silu(") + result.migrated.count("Fn.silu(") >= 1
    original = _load(tmp_path, "original", path.read_text())
    migrated = _load(tmp_path, "migrated", result.migrated)
    torch.manual_seed(0)
    old_model = eval(entry["build"], {**vars(original), "torch": torch})
    new_model = eval(entry["build"], {**vars(migrated), "torch": torch})
    state, new_keys = _map_state(old_model.state_dict(), new_model, migrated, result.plans)
    missing, unexpected = new_model.load_state_dict(state, strict=False)
    assert set(missing) == new_keys and not unexpected
    new_model.train()
    for expression in entry["inputs"]:
        args = eval(expression, {**vars(migrated), "torch": torch})
        out = _output_tensor(new_model(*(args if isinstance(args, tuple) else (args,))))
        out.float().pow(2).mean().backward()
    gates = [p for n, p in new_model.named_parameters() if n in new_keys]
    assert all(p.grad is not None for p in gates)


# Goldens in real code's spellings: the migrated model builds, the converted checkpoint loads
# strictly (old weights in place, gates as the fresh model's), and it trains one step.
_GOLDEN_BUILDS = {
    "vision_mlp_act_layer": "Encoder()",
    "method_relu_attention_helper": "Layer()",
    "file_local_gelu": "Block()",
    "activation_by_config": "Block()",
    "pointwise_conv_ffn": "EncoderLayer(SelfAttention(32, 4), 32)",
    "attention_heads_in_modulelist": "Block()",
    "widths_equal_at_every_call": "Model()",
    "linear_factory_and_subclass": "Block()",
    "sequential_with_leading_norm": "Block()",
    "configured_activation": "Block()",
    "conv1d_projections": "Block()",
    "split_ffn_two_classes": "Layer()",
}


@pytest.mark.parametrize("stem", sorted(_GOLDEN_BUILDS))
def test_golden_models_convert_and_train(stem: str) -> None:
    from tf_migrate.convert.state_dict import convert_state_dict

    before = FIXTURES / f"{stem}.before.py"
    plans = _run(before).plans
    torch.manual_seed(0)
    old = eval(_GOLDEN_BUILDS[stem], vars(load_module(before)))
    new = eval(_GOLDEN_BUILDS[stem], vars(load_module(FIXTURES / f"{stem}.after.py")))
    state, _ = convert_state_dict(old.state_dict(), plans, new.state_dict())
    new.load_state_dict(state, strict=True)
    kept = old.state_dict()
    assert all(any(w.shape == v.shape and torch.equal(w, v) for w in state.values()) for v in kept.values())
    gates = {k for k in state if k not in kept and not any(
        plan.renamed and k.endswith(tuple(plan.renamed.values())) for plan in plans)}
    assert len(state) == len(kept) + len(gates)
    assert gates and all(k.endswith(("3.weight", "3.bias", "gate.weight", "gate.bias")) for k in gates)
    out = new(torch.randn(2, 5, 32))
    assert out.shape == (2, 5, 32) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    named = dict(new.named_parameters())
    assert all(named[k].grad is not None and named[k].grad.abs().sum() > 0 for k in gates)


def test_gate_applied_where_the_input_is_still_unbound() -> None:
    """`x = fc1(x); x = act(x)`: the gate reads the block input, not fc1's output."""
    import torch.nn.functional as Fn

    module = load_module(FIXTURES / "vision_mlp_act_layer.after.py")
    torch.manual_seed(0)
    mlp = module.Mlp(8, 24).eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    mlp.double()
    expected = mlp.fc2(Fn.silu(mlp.fc1(x)) * mlp.fc3(x))
    assert torch.allclose(mlp(x), expected, rtol=1e-12, atol=1e-12)


CROSS_FILE = FIXTURES / "cross_file"


def _migrate_tree(folder: Path) -> dict:
    from tf_migrate.analysis.project import ProjectIndex

    files = sorted(folder.glob("*.py"))
    project = ProjectIndex.for_files(files)
    return {p.name: migrate_source(p.read_text(), str(p), _rules("TFM301"), project=project, source_path=str(p))
            for p in files}


def test_ffn_class_in_another_file_than_its_block() -> None:
    """The FFN's file holds no block: a function of another file builds it beside an attention
    whose softmax lives in a third file. Alone, the FFN's file is left alone."""
    results = _migrate_tree(CROSS_FILE / "before")
    for name, result in results.items():
        assert not result.errors and result.migrated == (CROSS_FILE / "after" / name).read_text(), name
    assert [name for name, r in results.items() if r.edits] == ["sublayers.py"]
    alone = CROSS_FILE / "before" / "sublayers.py"
    assert not _run(alone).edits


def test_cross_file_golden_converts_and_trains(tmp_path: Path) -> None:
    import importlib
    import shutil
    import sys

    from tf_migrate.convert.state_dict import convert_state_dict

    for side in ("before", "after"):
        shutil.copytree(CROSS_FILE / side, tmp_path / f"crossfile_{side}")
    sys.path.insert(0, str(tmp_path))
    try:
        old_pkg = importlib.import_module("crossfile_before.layers")
        new_pkg = importlib.import_module("crossfile_after.layers")
    finally:
        sys.path.remove(str(tmp_path))
    plans = [p for r in _migrate_tree(CROSS_FILE / "before").values() for p in r.plans]
    torch.manual_seed(0)
    old, new = old_pkg.EncoderLayer(), new_pkg.EncoderLayer()
    state, _ = convert_state_dict(old.state_dict(), plans, new.state_dict())
    new.load_state_dict(state, strict=True)
    assert {k for k in state if k not in old.state_dict()} == {"pos_ffn.w_3.weight", "pos_ffn.w_3.bias"}
    out = new(torch.randn(2, 5, 32))
    assert torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert new.pos_ffn.w_3.weight.grad.abs().sum() > 0


GETTER = FIXTURES / "activation_getter"


def test_activation_from_a_getter_in_another_file() -> None:
    """`helpers.activation_by_name(name=option)`: an if/elif chain in another file whose every
    branch is elementwise; the FFN is gated and the now unused relative import goes."""
    results = _migrate_tree(GETTER / "before")
    for name, result in results.items():
        assert not result.errors and result.migrated == (GETTER / "after" / name).read_text(), name
    assert [name for name, r in results.items() if r.edits] == ["layer.py"]
    assert "from . import helpers" not in results["layer.py"].migrated


def test_activation_getter_golden_converts_and_trains(tmp_path: Path) -> None:
    import importlib
    import shutil
    import sys
    from types import SimpleNamespace

    from tf_migrate.convert.state_dict import convert_state_dict

    for side in ("before", "after"):
        shutil.copytree(GETTER / side, tmp_path / f"getter_{side}")
    sys.path.insert(0, str(tmp_path))
    try:
        old_pkg = importlib.import_module("getter_before.layer")
        new_pkg = importlib.import_module("getter_after.layer")
    finally:
        sys.path.remove(str(tmp_path))
    plans = [p for r in _migrate_tree(GETTER / "before").values() for p in r.plans]
    options = SimpleNamespace(dim=32, heads=4, ffn_dim=64, act="gelu_tanh", act_dropout=0.1)
    torch.manual_seed(0)
    old, new = old_pkg.EncoderLayer(options), new_pkg.EncoderLayer(options)
    state, _ = convert_state_dict(old.state_dict(), plans, new.state_dict())
    new.load_state_dict(state, strict=True)
    assert {k for k in state if k not in old.state_dict()} == {"fc3.weight", "fc3.bias"}
    assert all(torch.equal(state[k], v) for k, v in old.state_dict().items())
    out = new(torch.randn(2, 5, 32))
    assert out.shape == (2, 5, 32) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert new.fc3.weight.grad.abs().sum() > 0


def test_split_feed_forward_refused_naming_the_split() -> None:
    """Up-projection + activation (a library table by config string) in one class, the
    down-projection in another, the up half's output also returned: refused, naming that."""
    (refusal,) = _run(FIXTURES / "split_ffn_library_table.noop.py").refusals
    assert refusal.line == 27 and refusal.reason == (
        "the FFN is split over two classes and `Layer` uses the output of `self.expand` other than as the first "
        "argument of one module")


def test_temporal_conv_ffn_refused_as_not_position_wise() -> None:
    """Two Conv1d with kernel sizes from the caller and an activation between: refused, naming
    the kernel size, not left silent."""
    (refusal,) = _run(FIXTURES / "temporal_conv_kernel_from_caller.noop.py").refusals
    assert "not provably 1 (`kernels[0]`)" in refusal.reason and "position-wise" in refusal.reason


def test_ffn_replayed_by_another_method_refused() -> None:
    """A relevance-propagation method walks fc2, act, fc1: refused for both the FFN the matcher
    reads and the one whose layers come from a star import (found by the census)."""
    refusals = _run(FIXTURES / "ffn_replayed_by_another_method.noop.py").refusals
    assert [(r.line, r.reason.split(" ")[0]) for r in refusals] == [(31, "`explain`"), (47, "`relprop`")]
    assert all("replays the feed-forward layer by layer (fc2, act, fc1)" in r.reason for r in refusals)


WRAPPED = FIXTURES / "sequential_wrapper"


def test_sequential_of_linear_wrappers_and_a_swish() -> None:
    """Sequential(LayerNorm, wrapper Linear, Swish(), Dropout, wrapper Linear, Dropout): the norm
    stays first, the wrapper's `.linear.` keys map to w1/w2, the unused relative import goes."""
    results = _migrate_tree(WRAPPED / "before")
    for name, result in results.items():
        assert not result.errors and result.migrated == (WRAPPED / "after" / name).read_text(), name
    (plan,) = results["feed_forward.py"].plans
    assert plan.renamed == {f"sequential.{i}.linear.{k}": f"sequential.1.{w}.{k}"
                            for i, w in ((1, "w1"), (4, "w2")) for k in ("weight", "bias")}


def test_sequential_wrapper_golden_converts_and_trains(tmp_path: Path) -> None:
    import importlib
    import shutil
    import sys

    from tf_migrate.convert.state_dict import convert_state_dict

    for side in ("before", "after"):
        shutil.copytree(WRAPPED / side, tmp_path / f"wrapped_{side}")
    sys.path.insert(0, str(tmp_path))
    try:
        old_pkg = importlib.import_module("wrapped_before.block")
        new_pkg = importlib.import_module("wrapped_after.block")
    finally:
        sys.path.remove(str(tmp_path))
    plans = [p for r in _migrate_tree(WRAPPED / "before").values() for p in r.plans]
    torch.manual_seed(0)
    old, new = old_pkg.Block(), new_pkg.Block()
    state, _ = convert_state_dict(old.state_dict(), plans, new.state_dict())
    new.load_state_dict(state, strict=True)
    kept = old.state_dict()
    assert torch.equal(state["ffn.sequential.1.w1.weight"], kept["ffn.sequential.1.linear.weight"])
    assert torch.equal(state["ffn.sequential.1.w2.weight"], kept["ffn.sequential.4.linear.weight"])
    assert torch.equal(state["ffn.sequential.0.weight"], kept["ffn.sequential.0.weight"])
    out = new(torch.randn(2, 5, 32))
    assert out.shape == (2, 5, 32) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert new.ffn.sequential[1].w3.weight.grad.abs().sum() > 0


def test_conv1d_style_gate_keys_have_the_transposed_shape() -> None:
    """Conv1D(nf, nx) stores its weight (nx, nf): the plan lists the gate's keys in that layout,
    as the migrated model builds them; param-matched is refused for these layers."""
    before = FIXTURES / "conv1d_projections.before.py"
    (plan,) = _run(before).plans
    assert [(k.key, k.shape) for k in plan.new] == [("c_fc_gate.weight", ["nx", "n_state"]),
                                                    ("c_fc_gate.bias", ["n_state"])]
    mlp = load_module(FIXTURES / "conv1d_projections.after.py").MLP(128, 32)
    assert mlp.c_fc_gate.weight.shape == (32, 128) and mlp.c_fc_gate.bias.shape == (128,)
    (refusal,) = _run(before, hidden="param-matched").refusals
    assert "Conv1D-style" in refusal.reason


def test_layer_list_whose_first_module_an_option_picks_is_refused() -> None:
    (refusal,) = _run(FIXTURES / "layer_list_chosen_by_option.noop.py").refusals
    assert refusal.line == 43 and refusal.reason.startswith(
        "the first module of `self.layers` is `first`, built as GatedProjection or SigmoidGELUProjection "
        "depending on kind == \"approximate\" / kind == \"gated\"")


def test_block_building_an_attention_of_another_file_holds_an_ffn() -> None:
    """`Block.__init__` builds `MLP` beside `CausalSelfAttention` imported from attention.py:
    the MLP is a block FFN (it was left alone before)."""
    results = _migrate_tree(ROOT / "fixtures" / "projects" / "gpt_pretrained" / "gptlib")
    (edit,) = [e for e in results["model.py"].edits if e.code == "TFM301"]
    assert edit.message.startswith("feed-forward c_fc/c_proj -> gated")


# act_layer_unknown: the refusal stands at the caller that passes an unknown class (another
# class than the FFN's component): known, left as it was.
@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.before.py")) + sorted(
    p for p in FIXTURES.glob("*.noop.py") if p.name != "act_layer_unknown.noop.py"), ids=lambda p: p.name)
def test_every_finding_has_a_census_component(path: Path) -> None:
    """The scorer reads outcomes from the census: an edit or refusal outside every component is
    invisible there (IfExp activations, Swish modules, temporal conv pairs were)."""
    result = _run(path)
    assert not [f for f in result.outside if f.code == "TFM301"], result.outside
