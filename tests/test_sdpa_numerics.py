"""Numerical equivalence of every fixtures/sdpa golden pair (<case>.before.py vs <case>.after.py).

The after file is what tf-migrate wrote: hand-written attention replaced by
F.scaled_dot_product_attention. Both files are imported, the before module's weights are copied
into the after module (only buffers, e.g. a removed causal mask, may be dropped), and both are
run in eval mode on the same inputs. The after module is also run once in train mode with dropout.
"""

from __future__ import annotations

import pytest
import torch

from helpers import FIXTURES, load_module, tensors

SDPA = FIXTURES / "sdpa"
B, T, C = 2, 5, 16  # batch, sequence length, model width (4 heads of 4 unless noted)


def _x(t: int = T, c: int = C) -> torch.Tensor:
    return torch.randn(B, t, c)


def _keep(t: int = T) -> torch.Tensor:
    """(B, t) long padding mask, 1 = real token; the last two keys of sample 0 are padding."""
    keep = torch.ones(B, t, dtype=torch.long)
    keep[0, -2:] = 0
    return keep


def _scale_inside_matmul_inputs():
    q, k, v = (torch.randn(B, 4, T, 4) for _ in range(3))
    mask = (torch.rand(B, 1, T, T) > 0.5) | torch.eye(T, dtype=torch.bool)  # diagonal always visible
    return [(q, k, v, mask.long()), (q, k, v)]


def _kv_cache_inputs():
    past = (torch.randn(B, 4, 5, 4), torch.randn(B, 4, 5, 4))
    return [(_x(),), (_x(2), past)]  # prefill (Tq = Tk = 5), then decode with Tq = 2, Tk = 7


# case -> (class name, constructor args, constructor kwargs, inputs builder).
# The builder returns a list of positional-argument tuples; each tuple is one forward call.
CASES = {
    "aliased_imports": ("AliasAttention", (C, 4), {"attn_p": 0.1}, lambda: [(_x(),)]),
    # cross-attention, heads folded into the batch: 5 queries over 7 context tokens of width 12
    "baddbmm_beta_zero": ("FoldedCrossHeads", (C, 12, 4, 4), {}, lambda: [(_x(), torch.randn(B, 7, 12))]),
    "bert_additive_mask": ("BertSelfAttention", (C, 4, 0.1), {}, lambda: [
        (_x(), (1.0 - _keep()[:, None, None, :].float()) * -10000.0), (_x(),)]),
    "builtin_float_scale": ("FloatScaledAttention", (C, 4), {}, lambda: [(_x(),)]),
    "bmm_heads_in_batch": ("FoldedHeadAttention", (C, 4, 0.1), {}, lambda: [(torch.randn(T, B, C),)]),  # time-first
    "bool_mask_neg_inf": ("PaddedSelfAttention", (C, 4), {}, lambda: [(_x(), _keep() == 0), (_x(),)]),
    "causal_arange": ("CausalHead", (C, 8, 0.1), {}, lambda: [(_x(),)]),
    "causal_triu_forward": ("DecoderSelfAttention", (C, 4, 0.1), {}, lambda: [(_x(),)]),
    "edited_causal_masks": ("GlobalTokenCausal", (C, 4, 8), {}, lambda: [(_x(),)]),
    "einsum_permute_bthd": ("TimeMajorAttention", (C, 4, 0.1), {}, lambda: [(_x(),)]),
    "einsum_raw_params": ("RawParamAttention", (C, 4, 8), {}, lambda: [(_x(),)]),
    "fallback_class_under_try": ("DotProductAttention", (C,), {}, lambda: [(_x(),)]),  # the except branch
    "fill_value_split_over_lines": ("WrappedFillAttention", (), {}, lambda: [
        (_x(), _x(7), _x(7), torch.tensor([7, 3]))]),  # 5 queries over 7 keys, 3 of them real in sample 1
    "free_function_optional_dropout": ("HeadsWithFreeAttention", (C, 4, 0.1), {}, lambda: [
        (_x(), _keep()), (_x(),)]),
    "helper_causal_fill": ("FlatHeadsAttention", (C, 4), {"causal": True}, lambda: [(_x(),)]),
    "module_returns_ignored_probs": ("TwoPassBlock", (C, 4, 0.1), {}, lambda: [
        (_x(), _keep()[:, None, None, :]), (_x(),)]),
    # a file with no nn.Module at all: the function is wrapped in one here (`fn:` names a function)
    "free_function_only_file": ("fn:masked_attention", (), {}, lambda: [
        (*(torch.randn(B, 4, T, 4) for _ in range(3)), _keep()[:, None, None, :]),
        (*(torch.randn(B, 4, T, 4) for _ in range(3)),)]),
    "heads_first_einsum_shape_scale": ("TimeFirstEinsumAttention", (C, 4, 0.1), {}, lambda: [
        (torch.randn(T, B, C),)]),  # time-first
    "inline_softmax_built": ("SplitKeyAttention", (C, 4, 0.1), {}, lambda: [(_x(),)]),
    "inplace_prescale_view": ("CachedQkvAttention", (C, 4), {}, lambda: [(_x(),)]),
    "kv_cache_bottom_right": ("CachedCausalAttention", (C, 4, 16), {}, _kv_cache_inputs),
    "masked_fill_in_place": ("InPlaceMaskedAttention", (C, 4, 0.1), {}, lambda: [(_x(), _keep()), (_x(),)]),
    "mask_prepared_in_if_block": ("FoldedPadAttention", (C, 4), {}, lambda: [(_x(), _keep()), (_x(),)]),
    "matmul_method_calls": ("MethodProductAttention", (C, 4), {}, lambda: [(_x(),)]),
    "mingpt_tril_buffer": ("CausalSelfAttention", (C, 4, 8), {}, lambda: [(_x(),)]),
    "nanogpt_nonpersistent_mask": ("MaskedSelfAttention", (C, 4, 8, 0.1), {}, lambda: [(_x(),)]),
    "neg_finfo_max_name": ("FoldedPaddingAttention", (C,), {}, lambda: [(_x(), _keep() == 1)]),
    "nn_softmax_finfo": ("EncoderAttention", (C, 4, 0.1), {}, lambda: [(_x(), _keep())]),
    "no_functional_import": ("GlobalTokenMixer", (8, 2, 0.1), {}, lambda: [(torch.randn(B, 8, 3, 4),)]),
    "method_forms": ("MethodFormAttention", (C, 4), {}, lambda: [(_x(), torch.randn(1, 4, T, T))]),
    "relative_bias_padding": ("BiasedSelfAttention", (C, 4), {}, lambda: [(_x(), _keep()), (_x(),)]),
    "causal_and_optional_padding": ("DecoderSelfAttention", (C, 4), {}, lambda: [(_x(), _keep()), (_x(),)]),
    "no_scaling": ("DotProductSelfAttention", (C,), {}, lambda: [(_x(),)]),
    "one_expression": ("CompactAttention", (C, 4), {}, lambda: [(_x(),)]),
    # cross-attention: 5 queries over 7 keys, padded keys in sample 0
    "prescaled_div_fill_neg1e4": ("DistilStyleAttention", (C, 4, 0.1), {}, lambda: [
        (_x(), (kv := _x(7)), kv, _keep(7))]),
    "prescaled_q": ("PrescaledAttention", (C, 4), {"qk_scale": 0.7}, lambda: [(_x(),)]),  # non-default
    "pretransposed_keys": ("PreTransposedKeyAttention", (C, 4), {}, lambda: [(_x(),)]),
    "scale_read_before_head_split": ("ModelWidthScaledAttention", (C, 4), {}, lambda: [(_x(),)]),  # non-default
    # the rewritten class itself, with a temperature that is not the default sqrt(head_dim)
    # two attentions: sqrt(head_dim) and sqrt(7) kept on self as call results (math / numpy)
    "scale_attribute_from_call": ("SqrtAttributeAttention", (C, 4, 7), {}, lambda: [(_x(),)]),
    "scale_inside_matmul": ("ScaledDotProductAttention", (3.0, 0.1), {}, _scale_inside_matmul_inputs),
    # a float bias broadcast over the batch, with the padded keys of sample 0 pushed to -1e9
    "softmax_fp32_upcast": ("UpcastAttention", (C, 4), {}, lambda: [(_x(), torch.randn(1, 4, T, T)), (_x(),)]),
    "t5_augassign_bias": ("UnscaledBiasAttention", (C, 4, 4, 0.1), {}, lambda: [
        (_x(), torch.randn(1, 4, T, T) + (1 - _keep()[:, None, None, :].float()) * -1e9)]),
    "timm_self_scale": ("Attention", (C, 4), {"qk_scale": 0.3, "attn_drop": 0.1}, lambda: [(_x(),)]),  # non-default
}

# Pairs whose migrated code is known NOT to match the original: case -> reason (xfail, strict).
KNOWN_MISMATCHES: dict[str, str] = {}


def _disk_cases() -> set[str]:
    return {p.name.removesuffix(".before.py") for p in SDPA.glob("*.before.py")}


class _Function(torch.nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, *inputs):
        return self.function(*inputs)


def _build(case: str, stage: str) -> torch.nn.Module:
    cls_name, args, kwargs, _ = CASES[case]
    module = load_module(SDPA / f"{case}.{stage}.py")
    torch.manual_seed(0)
    if cls_name.startswith("fn:"):
        return _Function(getattr(module, cls_name[3:]))
    return getattr(module, cls_name)(*args, **kwargs)


def test_table_covers_every_fixture() -> None:
    on_disk = _disk_cases()
    assert set(CASES) == on_disk, (f"no table entry: {sorted(on_disk - set(CASES))}; "
                                   f"no fixture: {sorted(set(CASES) - on_disk)}")
    for case in CASES:
        assert (SDPA / f"{case}.after.py").exists(), f"{case}: no golden .after.py"


def _params(case: str):
    mark = ()
    if case in KNOWN_MISMATCHES:
        mark = pytest.mark.xfail(strict=True, reason=KNOWN_MISMATCHES[case])
    return pytest.param(case, id=case, marks=mark)


@pytest.mark.parametrize("case", [_params(c) for c in sorted(CASES)])
def test_sdpa_pair_matches(case: str) -> None:
    before, after = _build(case, "before"), _build(case, "after")

    state = before.state_dict()
    dropped = set(state) - set(after.state_dict())
    params = {name for name, _ in before.named_parameters()}
    buffers = {name for name, _ in before.named_buffers()}
    assert not dropped & params, f"parameters lost by the migration: {sorted(dropped & params)}"
    assert dropped <= buffers, f"non-buffer keys lost: {sorted(dropped - buffers)}"
    after.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=True)

    torch.manual_seed(1)
    calls = CASES[case][3]()
    before.eval()
    after.eval()
    shapes = []
    with torch.no_grad():
        for i, inputs in enumerate(calls):
            want, got = tensors(before(*inputs)), tensors(after(*inputs))
            assert len(want) == len(got)
            shapes.append([t.shape for t in got])
            for w, g in zip(want, got):
                assert g.shape == w.shape
                diff = (g - w).abs().max().item()
                assert torch.allclose(g, w, atol=1e-5, rtol=1e-4), f"call {i}: max |diff| = {diff:.3g}"

    # train mode: dropout inside SDPA must run and give finite output of the same shape
    after.train()
    for inputs, want_shapes in zip(calls, shapes):
        outs = tensors(after(*inputs))
        assert [t.shape for t in outs] == want_shapes
        assert all(torch.isfinite(t).all() for t in outs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_float32_softmax_cast_back_stays_as_close_in_half_precision(dtype) -> None:
    """The original computed the softmax in float32 and cast back; SDPA accumulates in float32 too.
    In bfloat16/float16 the migrated output must be as close to the float64 result as the original
    (benchmarks/softmax_upcast_precision.py measures the figures quoted in the rule's docstring)."""
    before, after = _build("softmax_fp32_upcast", "before"), _build("softmax_fp32_upcast", "after")
    after.load_state_dict(before.state_dict(), strict=True)
    before.eval()
    after.eval()
    torch.manual_seed(2)
    x = torch.randn(B, 64, C)
    with torch.no_grad():
        reference = before.double()(x.double())
        got_before = before.to(dtype)(x.to(dtype)).double()
        got_after = after.to(dtype)(x.to(dtype)).double()
    error_before = (got_before - reference).abs().max().item()
    error_after = (got_after - reference).abs().max().item()
    assert error_after <= 1.5 * error_before + 1e-3, (error_before, error_after)
