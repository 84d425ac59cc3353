"""TFM102: goldens, noops, idempotence, refusals, and numerical equivalence through a converted checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from tf_migrate.engine import migrate_source
from tf_migrate.rules.fused_qkv import SeparateQkvToFused

FOLDER = Path(__file__).resolve().parent.parent / "fixtures" / "fused_qkv"


def _run(path: Path, text: str):
    result = migrate_source(text, f"fused_qkv/{path.name}", [SeparateQkvToFused()])
    assert not result.errors, result.errors
    return result


@pytest.mark.parametrize("before", sorted(FOLDER.glob("*.before.py")), ids=lambda p: p.name)
def test_golden_and_idempotent(before: Path) -> None:
    after = before.with_name(before.name.replace(".before.py", ".after.py"))
    result = _run(before, before.read_text())
    assert result.migrated == after.read_text()
    again = _run(after, after.read_text())
    assert again.migrated == after.read_text() and not again.edits


@pytest.mark.parametrize("noop", sorted(FOLDER.glob("*.noop.py")), ids=lambda p: p.name)
def test_noop_is_byte_identical(noop: Path) -> None:
    result = _run(noop, noop.read_text())
    assert result.migrated == noop.read_text() and not result.edits


@pytest.mark.parametrize("case, words", [
    ("bias_mismatch", ["bias presence differs", "k bias=False (line 8)"]),
    ("cross_attention", ["not provably applied to the same tensor", "cross-attention"]),
    ("input_rebound", ["not provably applied to the same tensor"]),
    ("different_in_features", ["in_features differ (d, d_ctx)"]),
    ("conv1d_projections", ["transposed"]),
    ("raw_parameters", ["raw nn.Parameter"]),
])
def test_refusals_say_why(case: str, words: list[str]) -> None:
    path = FOLDER / f"{case}.noop.py"
    result = _run(path, path.read_text())
    assert len(result.refusals) == 1
    assert all(w in result.refusals[0].reason for w in words), result.refusals[0].reason


def test_plan_concatenates_in_qkv_order() -> None:
    path = FOLDER / "mingpt_separate.before.py"  # declared key, query, value: the plan still says q, k, v
    [plan] = _run(path, path.read_text()).plans
    assert [(c.target, c.sources, c.dim) for c in plan.concatenated] == [
        ("qkv.weight", ["query.weight", "key.weight", "value.weight"], 0),
        ("qkv.bias", ["query.bias", "key.bias", "value.bias"], 0),
    ]


def test_gqa_sizes_are_exact(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from convert_support import load_module

    old = load_module(FOLDER / "gqa_sizes_unbiased.before.py").GroupedAttention(32, 4, 2).eval()
    new = load_module(FOLDER / "gqa_sizes_unbiased.after.py").GroupedAttention(32, 4, 2).eval()
    state = old.state_dict()
    new.load_state_dict({"qkv_proj.weight": torch.cat(
        [state["q_proj.weight"], state["k_proj.weight"], state["v_proj.weight"]])}, strict=True)
    x = torch.randn(2, 5, 32)
    for a, b in zip(old(x), new(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("stem", ["mingpt_style", "bert_style"])
def test_composes_with_sdpa_and_converts_exactly(stem: str, tmp_path: Path) -> None:
    """TFM101 then TFM102 on a whole legacy model; the converted checkpoint gives the same outputs."""
    torch = pytest.importorskip("torch")
    from convert_support import build, convert, inputs, load_module, manifest, migrate, outputs_close

    entry = manifest()[stem]
    after, plan = migrate(stem, tmp_path)
    text = after.read_text()
    assert "scaled_dot_product_attention" in text and "self.qkv(" in text
    torch.manual_seed(0)
    old_module = load_module(Path(__file__).resolve().parent.parent / "fixtures" / "models" / f"{stem}.py")
    old = build(old_module, entry["build"]).eval()
    torch.save(old.state_dict(), tmp_path / "old.pt")
    result = convert(tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan)
    assert result.exit_code == 0, result.output
    new_module = load_module(after)
    new = build(new_module, entry["build"]).eval()
    new.load_state_dict(torch.load(tmp_path / "new.pt", weights_only=True), strict=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for args in inputs(old_module, entry["inputs"]):
            assert outputs_close(old(*args), new(*args))
