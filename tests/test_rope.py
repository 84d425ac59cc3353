"""TFM401: the inserted rotary helper's properties, composition with TFM101, refusals, and end to
end on the legacy models (build, load the mapped checkpoint, forward, backward, longer inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import FIXTURES, MODELS, load_module, manifest, meets_expectation
from tf_migrate.cli import main
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import select_rules
from tf_migrate.rules.rope.rotary_code import helper_statements

SPECS = manifest()
ROPE = FIXTURES / "rope"


def _migrate(text: str, path: str, *codes: str):
    result = migrate_source(text, path, [rule() for rule in select_rules(list(codes))])
    assert not result.errors, result.errors
    return result


def _in_order(text: str, path: str, *codes: str) -> str:
    for code in codes:
        text = _migrate(text, path, code).migrated
    return text


# --- composition, refusals, documentation (no torch needed) ---------------------------------

_COMPOSED = [MODELS / "einsum_gpt.py", MODELS / "aliased_bmm.py", *sorted(ROPE.glob("*.before.py"))]


@pytest.mark.parametrize("path", _COMPOSED, ids=lambda p: p.name)
def test_tfm101_and_tfm401_compose_in_either_order(path: Path) -> None:
    text = path.read_text()
    first = _in_order(text, path.name, "TFM101", "TFM401")
    second = _in_order(text, path.name, "TFM401", "TFM101")
    assert first == second
    assert "apply_rotary(" in first


@pytest.mark.parametrize("name, words", [
    ("cross_attention_class", "cross-attention"),
    ("builtin_encoder", "built-in"),
    ("assembled_in_function", "cannot tell which attention"),
    ("foreign_layers", "another file"),
    ("attention_shared_with_other_model", "also used outside"),
    ("table_read_elsewhere", "also read"),
    ("kv_cache_after_scores", "cache would hold rotated keys"),
    ("own_apply_rotary", "not tf-migrate's rotary helper"),
])
def test_refuses_with_a_reason(name: str, words: str) -> None:
    result = _migrate((ROPE / f"{name}.noop.py").read_text(), name, "TFM401")
    assert not result.edits
    assert any(words in r.reason for r in result.refusals), result.refusals


@pytest.mark.parametrize("name", ["learned_scale_factor", "timestep_embedding", "positions_from_outside",
                                  "learned_positions", "relative_sinusoid"])
def test_look_alikes_are_silent(name: str) -> None:
    result = _migrate((ROPE / f"{name}.noop.py").read_text(), name, "TFM401")
    assert not result.edits and not result.refusals


def test_plan_drops_the_persistent_table_only() -> None:
    persistent = _migrate((ROPE / "pe_module_einsum.before.py").read_text(), "a.py", "TFM401")
    assert [(p.qualname, p.dropped) for p in persistent.plans] == [("PositionalEncoding", ["pe"])]
    transient = _migrate((ROPE / "pow_div_term_matmul.before.py").read_text(), "b.py", "TFM401")
    assert all(not p.dropped for p in transient.plans)


def test_other_positions_option_is_a_usage_error() -> None:
    from tf_migrate.engine.run import UsageError

    with pytest.raises(UsageError, match="learned"):  # checked when the rule is built, before any file
        select_rules(["TFM401"])[0]({"positions": "learned"})


def test_base_option_reaches_the_helper() -> None:
    rule = select_rules(["TFM401"])[0]({"base": 500000})
    result = migrate_source((ROPE / "pe_module_einsum.before.py").read_text(), "a.py", [rule])
    assert "base=500000.0" in result.migrated


def test_explain_says_fine_tuning_is_needed() -> None:
    output = CliRunner().invoke(main, ["explain", "TFM401"]).output
    assert "compatible" in output and "fine-tuning" in output


@pytest.mark.parametrize("stem", sorted(SPECS))
def test_expected_tfm401_behaviour(stem: str) -> None:
    expected = SPECS[stem].get("expect", {}).get("TFM401")
    result = _migrate((MODELS / f"{stem}.py").read_text(), f"{stem}.py", "TFM401")
    assert meets_expectation(expected, result, "TFM401"), (expected, result.refusals)


# --- torch: the helper and the migrated models ------------------------------------------------

def _helper(torch):
    import libcst as cst

    namespace = {"torch": torch}
    exec(cst.Module(body=helper_statements("torch", 10000.0)).code, namespace)
    return namespace["apply_rotary"]


def test_helper_scores_depend_on_distance_only_and_keep_norms() -> None:
    torch = pytest.importorskip("torch")
    rotary = _helper(torch)
    torch.manual_seed(0)
    T, D = 12, 16
    q = torch.randn(1, 1, 1, D, dtype=torch.float64).expand(1, 2, T, D)  # (B, H, T, D), same vector at every t
    k = torch.randn(1, 1, 1, D, dtype=torch.float64).expand(1, 2, T, D)
    scores = rotary(q) @ rotary(k).transpose(-2, -1)  # (B, H, T, T)
    for shift in range(1, 4):
        # the angles are computed in float32 (as in real use), hence the tolerance
        torch.testing.assert_close(scores[..., shift:, shift:], scores[..., :-shift, :-shift], atol=1e-5, rtol=1e-5)
    x = torch.randn(2, 3, T, D, dtype=torch.float64)
    torch.testing.assert_close(rotary(x).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotary(x[:, :, 5:], offset=5), rotary(x)[:, :, 5:])
    torch.testing.assert_close(rotary(x.transpose(1, 2), seq_dim=1), rotary(x).transpose(1, 2))
    assert rotary(x.float()).dtype == torch.float32


_APPLIED = sorted(stem for stem, spec in SPECS.items() if spec.get("expect", {}).get("TFM401") == "apply")


def _longer(args, extra: int):
    tokens = args[0]
    return (tokens.repeat(1, 1 + extra // tokens.size(1) + 1)[:, : tokens.size(1) + extra],)


@pytest.mark.parametrize("codes", [("TFM401",), ("TFM101", "TFM401")], ids="+".join)
@pytest.mark.parametrize("stem", _APPLIED)
def test_migrated_model_loads_runs_and_extrapolates(stem: str, codes, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    spec = SPECS[stem]
    source = MODELS / f"{stem}.py"
    result = _migrate(source.read_text(), source.name, *codes)
    assert any(e.code == "TFM401" for e in result.edits)
    migrated = tmp_path / source.name
    migrated.write_text(result.migrated)
    before_module, after_module = load_module(source), load_module(migrated)
    build = lambda m: eval(spec["build"], {**vars(m), "torch": torch})  # noqa: E731
    before, after = build(before_module), build(after_module)

    state = before.state_dict()
    dropped = {k for k in state if any(k == d or k.endswith("." + d) for p in result.plans for d in p.dropped)}
    assert bool(dropped) == ("register_buffer" in source.read_text())  # the `pe` table, when it was a buffer
    assert set(after.state_dict()) == set(state) - dropped
    after.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=True)

    torch.manual_seed(1)
    args = eval(spec["inputs"][-1], {**vars(before_module), "torch": torch})
    args = args if isinstance(args, tuple) else (args,)
    after.train()
    output = after(*args)
    output.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in after.parameters() if p.requires_grad)
    after.eval()
    with torch.no_grad():
        longer = after(*_longer(args, 300))  # past the old table's max_len (128 / 512)
    assert torch.isfinite(longer).all()


@pytest.mark.parametrize("codes", [("TFM401",), ("TFM101", "TFM401")], ids="+".join)
def test_cached_decoding_matches_the_full_sequence(codes, tmp_path: Path) -> None:
    """Queries rotated with the cache offset see the same relative positions as in one pass."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "kv.py"
    path.write_text(_in_order((ROPE / "kv_cache_offset.before.py").read_text(), "kv.py", *codes))
    model = load_module(path).CachedLM(50).eval()
    torch.manual_seed(3)
    idx = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        full, _ = model(idx)
        _, past = model(idx[:, :6])
        step, _ = model(idx[:, 6:], past)
        longer, _ = model(torch.randint(0, 50, (1, 100)))  # the old table held 64 positions
    torch.testing.assert_close(step, full[:, 6:], atol=1e-5, rtol=1e-4)
    assert torch.isfinite(longer).all()


# --- ALiBi (option positions = "alibi") -------------------------------------------------------

def _alibi(text: str, path: str = "x.py"):
    rule = select_rules(["TFM401"])[0]({"positions": "alibi"})
    result = migrate_source(text, path, [rule])
    assert not result.errors, result.errors
    return result


def test_alibi_needs_sdpa_and_says_so() -> None:
    result = _alibi((MODELS / "einsum_gpt.py").read_text())
    assert not result.edits and "TFM101" in result.refusals[0].hint


def test_alibi_slopes_and_bias() -> None:
    torch = pytest.importorskip("torch")
    import libcst as cst

    from tf_migrate.rules.rope import alibi

    namespace = {"torch": torch}
    exec(cst.Module(body=alibi.helper_statements("torch")).code, namespace)
    slopes, bias = namespace["_alibi_slopes"], namespace["alibi_bias"]
    assert slopes(8) == [2 ** -n for n in range(1, 9)]
    assert slopes(6) == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]  # the paper's non-power-of-two rule
    q, k = torch.zeros(2, 4, 5, 8), torch.zeros(2, 4, 7, 8)  # 5 new queries after 2 cached keys
    plain = bias(q, k)  # (H, T, S)
    assert plain[0, 4, 6] == 0 and plain[0, 0, 0] == -2 * 2 ** -2 and plain[1, 0, 0] == -2 * 2 ** -4
    padding = torch.tensor([True] * 6 + [False])[None, None, None, :].expand(2, 1, 1, 7)  # True = visible
    folded = bias(q, k, attn_mask=padding)
    assert folded.shape == (2, 4, 5, 7) and torch.isinf(folded[..., 6]).all() and torch.isfinite(folded[..., :6]).all()
    square = k[:, :, :5]
    hidden = torch.ones(5, 5, dtype=torch.bool).tril().logical_not()
    torch.testing.assert_close(bias(q, square, is_causal=True), bias(q, square).masked_fill(hidden, float("-inf")))


@pytest.mark.parametrize("build", ["EinsumGPT(vocab_size=100, d_model=32, n_heads=4, n_layers=2)",
                                   "EinsumGPT(vocab_size=100, d_model=48, n_heads=6, n_layers=2)"])
def test_alibi_model_after_tfm101_loads_runs_and_extrapolates(build: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    source = MODELS / "einsum_gpt.py"
    result = _alibi(_in_order(source.read_text(), source.name, "TFM101"), source.name)
    assert any("ALiBi" in e.message for e in result.edits), result.refusals
    path = tmp_path / source.name
    path.write_text(result.migrated)
    before = eval(build, {**vars(load_module(source)), "torch": torch})
    after = eval(build, {**vars(load_module(path)), "torch": torch})
    state = {k: v for k, v in before.state_dict().items() if not k.endswith("pos.pe")}
    after.load_state_dict(state, strict=True)
    after(torch.randint(0, 100, (2, 20))).pow(2).mean().backward()
    with torch.no_grad():
        assert torch.isfinite(after.eval()(torch.randint(0, 100, (1, 300)))).all()


_CROSS_CALL = "x + self.src_attn(x, memory, memory)"
_BOTH_CALLS = "x = x + self.self_attn(x, x, x)\n        return x + self.src_attn(x, memory, memory)"


@pytest.mark.parametrize("change, words", [
    (None, "the keys `k` are computed from `key`, `query` and the queries `q` from `query`: "
           "`self.src_attn(x, memory, memory)` on line 48 passes `memory` as `key` and `x` as `query`"),
    ((_CROSS_CALL, "x + self.src_attn(x, x, x)"), "every call of a `MultiHeadAttention` in this file (2) passes one "
                                                  "tensor as `query` and `key`, but calls in other files are not followed"),
    ((_BOTH_CALLS, "return x"), "no call of a `MultiHeadAttention` is in this file to show that they are one tensor"),
])
def test_cross_attention_refusal_says_what_was_seen(change, words: str) -> None:
    """Not "this may be cross-attention": the call that passes another tensor, or that none was found."""
    text = (ROPE / "cross_attention_class.noop.py").read_text()
    if change is not None:
        assert change[0] in text
        text = text.replace(*change)
    result = _migrate(text, "cross_attention_class", "TFM401")
    assert not result.edits
    assert any(words in r.reason for r in result.refusals), [r.reason for r in result.refusals]


def test_alibi_cross_attention_refusal_names_the_call() -> None:
    after = _in_order((ROPE / "cross_attention_class.noop.py").read_text(), "cross_attention_class.py", "TFM101")
    result = _alibi(after)
    assert not result.edits
    assert any("cannot show that q and k come from the same input: `self.src_attn(x, memory, memory)` on line 48 "
               "passes `memory` as `key` and `x` as `query`" in r.reason for r in result.refusals), \
        [r.reason for r in result.refusals]
