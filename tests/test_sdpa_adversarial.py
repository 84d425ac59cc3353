"""TFM101 on code outside the common spellings: refusals name the real reason and line; rewrites of
masks that only look causal keep their meaning."""

from __future__ import annotations

from pathlib import Path

import pytest

from tf_migrate.engine.file import migrate_source
from tf_migrate.rules.sdpa import EinsumAttentionToSdpa

FOLDER = Path(__file__).resolve().parent.parent / "fixtures" / "sdpa"


def _refusals(case: str):
    path = FOLDER / f"{case}.noop.py"
    result = migrate_source(path.read_text(), f"sdpa/{path.name}", [EinsumAttentionToSdpa()])
    assert not result.errors and not result.edits
    return result.refusals


@pytest.mark.parametrize("case, line, words", [
    ("query_mutated_in_place", 20, ["`q` is changed in place at line 20"]),
    ("fill_value_name_reused", 18, ["`att.dtype` is read at line 18, outside the chain"]),
    ("strictly_causal_empty_row", 23, ["hides the diagonal too", "the first query sees no key"]),
    # chains the matcher cannot follow are refused, not skipped silently
    ("inline_softmax_module", 20, ["scores at line 13", "softmax at line 18",
                                   "built inline as `nn.Softmax(dim=-1)` (line 18)"]),
    ("cast_softmax_guarded_view", 22, ["rebound by 3 statements inside `if key_padding_mask is not None:` (line 22)"]),  # the float32 round trip is fine
    ("bert_head_mask", 30, ["scores at line 25", "softmax at line 26",
                            "changed by `probs * head_mask` (line 29)"]),
    # the hazard twins of the spellings issue 15 added
    ("scale_attribute_tensor_call", 17, ["`self.norm`", "not provably a Python number"]),
    ("inline_softmax_no_dim", 10, ["scores at line 8", "softmax at line 9"]),
    ("masked_fill_in_place_alias", 10, ["`scores` are bound to `raw` at line 10"]),
    ("mask_block_reads_scores", 11, ["`scores.shape` is read at line 11, outside the chain"]),
    ("baddbmm_adds_bias", 9, ["scores at line 8", "softmax at line 9",
                              "`torch.baddbmm` (line 8) adds `bias` to the scores it computes"]),
    ("softmax_cast_to_other_dtype", 11, ["cast to the dtype of `memory`"]),
    ("free_function_returns_probs", 13, ["`probs` are returned at line 13",
                                         "`attend(q, k, v)` at line 18 binds it to `self.last_probs`"]),
    ("softmax_chained_assignment", 18, ["the probabilities `probs` are bound in the chained assignment `probs = "
                                        "self.last_probs = torch.softmax(scores, dim=-1)` (line 17): `self.last_probs` "
                                        "also holds them"]),
    ("module_returns_read_scores", 15, ["the attention scores `logits` are returned at line 15"]),
    ("module_returns_read_probs", 14, ["the attention probabilities `w` are returned at line 14",
                                       "`weights`, bound from `self.mix(q, k, v)` at line 28, is read at line 30"]),
    ("softmax_module_hooked", 26, ["`self.mixer.softmax.register_forward_hook`", "silently stop firing"]),
    ("dropout_hooked_by_type", 18, ["`isinstance(module, nn.Dropout)`", "registered in this file (line 19)"]),
    ("autograd_softmax_function", 25, ["scores at line 23", "softmax at line 24",
                                       "the custom autograd function `FusedMaskSoftmax.apply(...)` (line 24)"]),
    # in-place mask helpers (read across files: tests/test_sdpa_helpers.py)
    ("helper_fill_hides_diagonal", 22, ["`hide_after_(...)` at line 22 hides the diagonal too"]),
    ("helper_fill_other_work", 22, ["`w` is passed to `soften_future_(...)` at line 22",
                                    "line 7) does more than fill one triangle"]),
])
def test_refusal_says_why(case: str, line: int, words: list[str]) -> None:
    refusals = _refusals(case)
    assert len(refusals) == 1
    assert refusals[0].line == line
    assert all(w in refusals[0].reason for w in words), refusals[0].reason


def test_softmax_without_scores_product_is_not_attention() -> None:
    assert _refusals("router_softmax_mixture") == []


def test_probabilities_leaving_the_scope_are_refused() -> None:
    reasons = [r.reason for r in _refusals("probs_escape_scope")]
    assert len(reasons) == 2
    assert "`LAST_ATTENTION` is declared global" in reasons[0]
    assert "reads `locals()`" in reasons[1]


@pytest.mark.parametrize("cls, edit", [("PrefixLMAttention", lambda m: m.open_prefix(3)),
                                       ("LastRowSeesAll", lambda m: None),
                                       ("SummaryColumnAdditive", lambda m: None)])
def test_edited_triangles_keep_their_meaning(cls: str, edit) -> None:
    """A triangle changed in place after it was made is not `is_causal` (the golden passes it)."""
    torch = pytest.importorskip("torch")
    from helpers import load_module

    before, after = (getattr(load_module(FOLDER / f"edited_causal_masks.{stage}.py"), cls)
                     for stage in ("before", "after"))
    torch.manual_seed(0)
    old = before(16, 4, 8) if cls == "PrefixLMAttention" else before(16, 4)
    new = after(16, 4, 8) if cls == "PrefixLMAttention" else after(16, 4)
    new.load_state_dict(old.state_dict())
    edit(old)
    edit(new)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    old, new = old.double().eval(), new.double().eval()
    with torch.no_grad():
        assert torch.allclose(old(x), new(x), atol=1e-12)

