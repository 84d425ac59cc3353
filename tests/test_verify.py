"""`tf-migrate verify`: the fixture models after TFM101, a broken migration, an untraceable model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

torch = pytest.importorskip("torch")

from click.testing import CliRunner
from tf_migrate.cli import main
from tf_migrate.engine.file import migrate_source
from tf_migrate.plan import plan_document
from tf_migrate.engine.registry import find_rule, select_rules
from tf_migrate.verify.command import NOTICE
from tf_migrate.verify.session import VerifyOptions, verify

MODELS = Path(__file__).parent.parent / "fixtures" / "models"
MANIFEST = tomllib.loads((MODELS / "manifest.toml").read_text())
SDPA = [find_rule("TFM101")({})]


def _migrate(source: Path, target: Path) -> Path:
    """Writes the migrated file and, next to it, its checkpoint plan (saves verify a rewrite run)."""
    result = migrate_source(source.read_text(), source.name, SDPA)
    assert not result.errors
    target.write_text(result.migrated)
    target.with_suffix(".plan.json").write_text(json.dumps(plan_document(result.plans)))
    return target


def _changed_by_sdpa() -> list[str]:
    return [stem for stem in sorted(MANIFEST)
            if migrate_source((MODELS / f"{stem}.py").read_text(), stem, SDPA).changed]


# Models whose verification is known to fail (stem -> reason). Empty since TFM101 casts additive
# masks to the query's dtype: SDPA with float64 inputs and a float32 mask silently miscomputes on
# torch 2.13 CPU, which verify's float64 pass caught on bert_style.
_KNOWN: dict[str, str] = {}
# Models whose attention computes its softmax in float32 and casts back (`qk.float()` ...
# `.to(q.dtype)`): in float64 the original DOWNcasts its softmax to float32, SDPA keeps float64;
# verify finds the cast (verify/precision.py) and judges those modules at float32 tolerances.
_FLOAT32_SOFTMAX = {"whisper_encdec"}


@pytest.mark.parametrize("stem", _changed_by_sdpa())
def test_fixture_models_verify_after_sdpa(stem, tmp_path):
    if stem in _KNOWN:
        pytest.xfail(_KNOWN[stem])
    entry = MANIFEST[stem]
    after = _migrate(MODELS / f"{stem}.py", tmp_path / f"{stem}.py")
    result = verify(VerifyOptions(MODELS / f"{stem}.py", after, entry["build"], entry["inputs"][:2],
                                  plan=after.with_suffix(".plan.json")))
    assert result.verified, result.failures
    if stem in _FLOAT32_SOFTMAX:  # judged at float32 tolerances in float64, where the original rounds
        attentions = {f"{side}.blocks.{i}.{attn}" for side, attn in
                      (("encoder", "attn"), ("decoder", "attn"), ("decoder", "cross_attn")) for i in (0, 1)}
        assert attentions <= set(result.narrowed), result.narrowed
        assert all("qk = qk.float()" in result.narrowed[path] for path in attentions), result.narrowed
    assert result.tracing != "eager", result.trace_failures
    assert result.load.missing == result.load.unexpected == []
    assert {c.dtype for c in result.instances if c.ok and c.calls} == {"float32", "float64"}
    (evidence,) = result.evidence
    assert evidence.rule == "TFM101" and evidence.paths and all(p.ok for p in evidence.paths)
    assert {c.dtype for c in result.comparisons} == {"float32", "float64"}


def test_bert_float64_mask_dtype_is_caught_and_localised(tmp_path):
    """The float64 pass catches a mask left in float32 (what TFM101 once wrote) and locates it."""
    entry = MANIFEST["bert_style"]
    after = _migrate(MODELS / "bert_style.py", tmp_path / "bert_style.py")
    text = after.read_text()
    assert text.count(".to(query_layer.dtype)") == 1
    after.write_text(text.replace(".to(query_layer.dtype)", ""))
    result = verify(VerifyOptions(MODELS / "bert_style.py", after, entry["build"], entry["inputs"][:1],
                                  plan=after.with_suffix(".plan.json")))
    assert all(c.ok for c in result.comparisons if c.dtype == "float32")
    assert result.divergence.path == "encoder.layer.0.attention.self"


def test_flipped_mask_exits_1_and_names_the_submodule(tmp_path):
    stem = "kv_cache_gpt"
    after = _migrate(MODELS / f"{stem}.py", tmp_path / f"{stem}.py")
    text = after.read_text()
    assert text.count("!= 0") == 1
    after.write_text(text.replace("!= 0", "== 0"))
    entry = MANIFEST[stem]
    run = CliRunner().invoke(main, ["verify", str(MODELS / f"{stem}.py"), str(after), "--build", entry["build"],
                                    "--input", entry["inputs"][2]])
    assert run.exit_code == 1, run.output
    assert run.output.splitlines()[0] == NOTICE  # the user's code runs: the first line says so
    assert "diverges first at: h.0.attn (" in run.output
    assert "first diverging node: h.0.attn: scaled_dot_product_attention at kv_cache_gpt.py:" in run.output
    assert "AFTER differs from what the rewriter produces" in run.output


def test_missing_plan_reports_the_unexpected_key_exactly(tmp_path):
    after = _migrate(MODELS / "mingpt_style.py", tmp_path / "mingpt_style.py")
    empty = tmp_path / "plan.json"
    empty.write_text(json.dumps({"version": 1, "classes": []}))
    run = CliRunner().invoke(main, ["verify", str(MODELS / "mingpt_style.py"), str(after), "--plan", str(empty),
                                    "--build", MANIFEST["mingpt_style"]["build"], "--format", "json"])
    assert run.exit_code == 1
    document = json.loads(run.stdout)
    assert document["checkpoint"]["unexpected"] == ["blocks.0.attn.bias", "blocks.1.attn.bias"]
    assert document["checkpoint"]["missing"] == []


TINY = '''
import math
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h, self.qkv, self.out = h, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x, mask=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        if mask is not None:
            att = att.masked_fill(mask == 0, float("-inf"))
        att = torch.softmax(att, dim=-1)
        return self.out(torch.matmul(att, v).transpose(1, 2).reshape(B, T, C))


class Model(nn.Module):
    def __init__(self, vocab=50, d=16, h=2):
        super().__init__()
        self.emb, self.attn = nn.Embedding(vocab, d), Attention(d, h)

    def forward(self, idx, mask=None):
        x = self.emb(idx)
'''


def _tiny(tmp_path, body: str) -> tuple[Path, Path]:
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    before = tmp_path / "before" / "tiny.py"
    before.write_text(TINY + body)
    return before, _migrate(before, tmp_path / "after" / "tiny.py")


def test_traceable_model_gives_fx_evidence_and_infers_token_inputs(tmp_path):
    before, after = _tiny(tmp_path, "        return self.attn(x, mask)\n")
    result = verify(VerifyOptions(before, after, "Model()"))
    assert result.verified, result.failures
    assert result.tracing == "torch.export" and not result.trace_failures
    (path,) = result.evidence[0].paths
    assert path.path == "attn" and path.before["softmax"] == 1 and path.after["scaled_dot_product_attention"] == 1
    assert result.inputs[0].startswith("inferred: (1, 8) torch.int64")


def test_data_dependent_branch_is_traced_by_make_fx_with_the_reason(tmp_path):
    body = "        if x.sum() > 0:\n            x = x * 2\n        return self.attn(x, mask)\n"
    before, after = _tiny(tmp_path, body)
    run = CliRunner().invoke(main, ["verify", str(before), str(after), "--build", "Model()"])
    assert run.exit_code == 0, run.output
    assert "structure: torch.fx graphs of before and after by make_fx (real tensors)" in run.output
    assert "  tried first: torch.export on before: " in run.output
    assert "ok  attn: softmax 1->0, matmul 2->0, scaled_dot_product_attention 0->1" in run.output


def test_directory_pair_with_relative_imports(tmp_path):
    for side in ("before", "after"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "model.py").write_text("from .layers import Model\n")
    (tmp_path / "before" / "layers.py").write_text(TINY + "        return self.attn(x, mask)\n")
    _migrate(tmp_path / "before" / "layers.py", tmp_path / "after" / "layers.py")
    result = verify(VerifyOptions(tmp_path / "before", tmp_path / "after", "Model()", ["torch.randint(0, 50, (2, 5))"],
                                  entry="model.py"))
    assert result.verified, result.failures
    assert [p.path for p in result.evidence[0].paths] == ["attn"]


@pytest.mark.parametrize("args, message", [
    (["nope.py", "nope.py", "--build", "Model()"], "no such file"),
    ([str(MODELS / "mingpt_style.py")] * 2 + ["--build", "GPT("], "evaluating 'GPT('"),
    ([str(MODELS)] * 2 + ["--build", "GPT()"], "--entry"),
])
def test_usage_errors_exit_2(args, message):
    run = CliRunner().invoke(main, ["verify", *args])
    assert run.exit_code == 2 and message in run.output


def test_cli_import_does_not_import_torch():
    code = "import sys, tf_migrate.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compatible_rule_checks_new_keys_and_sane_outputs(tmp_path, monkeypatch):
    from tf_migrate.verify import session

    before, _ = _tiny(tmp_path, "        return self.attn(x, mask)\n")
    after = tmp_path / "after" / "tiny.py"
    after.write_text(TINY.replace("self.attn = nn.Embedding(vocab, d), Attention(d, h)",
                                  "self.attn = nn.Embedding(vocab, d), Attention(d, h)\n"
                                  "        self.gate = nn.Parameter(torch.ones(d))")
                     + "        return self.attn(x * self.gate, mask) + 1\n")
    monkeypatch.setattr(session, "_equivalence", lambda code: "compatible")
    for init, verified in (("ones", True), ("zeros", False)):
        plan = tmp_path / f"{init}.json"
        plan.write_text(json.dumps({"version": 1, "classes": [{"file": "tiny.py", "class": "Model", "rules": ["TFM299"],
                                                                "new": [{"key": "gate", "init": init}]}]}))
        result = verify(VerifyOptions(before, after, "Model()", plan=plan))
        assert result.verified is verified, result.failures
        assert list(result.load.new_keys) == ["gate"]
        assert result.comparisons if verified else not result.comparisons


def _verified_structure(stem: str, select: list[str], tmp_path) -> str:
    """Migrate a legacy model with `select`, verify it on its first input, return the report."""
    source = MODELS / f"{stem}.py"
    result = migrate_source(source.read_text(), source.name, [find_rule(code)() for code in select])
    after = tmp_path / source.name
    after.write_text(result.migrated)
    entry = MANIFEST[stem]
    run = CliRunner().invoke(main, ["verify", str(source), str(after), "--build", entry["build"],
                                    "--input", entry["inputs"][0], "--select", ",".join(select)])
    assert run.exit_code == 0, run.output
    return run.output


def test_structural_evidence_for_fused_qkv_and_swiglu(tmp_path):
    """TFM102 leaves fewer linear projections in the attention; TFM301 adds the gate multiply."""
    output = _verified_structure("mingpt_style", ["TFM101", "TFM102", "TFM301"], tmp_path)
    assert "ok  blocks.0.attn: linear 4->2" in output
    assert "ok  blocks.0.mlp: silu 0->1, gelu 1->0, mul 0->1" in output


def test_structural_evidence_for_prenorm_and_rope(tmp_path):
    """Model-wide checks: TFM201 adds a final norm, TFM401 adds the rotation to the attentions;
    everything but the lines the rewriter changed is compared node for node."""
    output = _verified_structure("einsum_gpt", ["TFM201", "TFM401"], tmp_path)
    assert "ok  <root>: layer_norm 4->5" in output
    assert "ok  <root>: neg 0->4" in output
    assert "  outside the migrated modules and the lines the rewriter changed: 40 nodes identical" in output


@pytest.mark.parametrize("plant, first", [
    # an edit by hand outside what the rewriter wrote
    (("return self.lm_head(x)", "return self.lm_head(x * 2)"),
     "node 39 outside the migrated modules: before linear in lm_head -> [1, 12, 100] (einsum_gpt.py:99: "
     "return self.lm_head(x)), after mul in <root> -> [1, 12, 32] (einsum_gpt.py:127: return self.lm_head(x * 2))"),
    # a norm placed by hand where the rewriter did not put it: the line is not the rewriter's
    (("x = x + self.drop(self.attn(self.ln1(x)))", "x = x + self.drop(self.attn(self.ln2(x)))"),
     "node 1 outside the migrated modules: before einsum in layers.0.attn -> [1, 12, 32] (einsum_gpt.py:46: "
     'q = torch.einsum("btd,de->bte", x, self.w_q).reshape(B, T, self.n_heads, self.head_dim)), '
     "after layer_norm in layers.0.ln2 -> [1, 12, 32] (einsum_gpt.py:107: x = x + self.drop(self.attn(self.ln2(x))))"),
], ids=["outside-edit", "norm-misplaced"])
def test_planted_change_outside_the_prenorm_and_rope_regions_is_named(tmp_path, plant, first):
    """Under TFM201/TFM401 the migrated region is what the rewriter wrote; the rest must match."""
    source = MODELS / "einsum_gpt.py"
    migrated = migrate_source(source.read_text(), source.name, [find_rule(c)() for c in ("TFM201", "TFM401")]).migrated
    assert migrated.count(plant[0]) == 1
    after = tmp_path / source.name
    after.write_text(migrated.replace(*plant))
    entry = MANIFEST["einsum_gpt"]
    result = verify(VerifyOptions(source, after, entry["build"], entry["inputs"][:1], select=["TFM201", "TFM401"]))
    assert not result.verified
    assert result.outside.first == first
    assert f"the graphs differ outside the migrated modules ({first})" in result.failures


def test_structural_evidence_for_raw_parameter_fusion(tmp_path):
    """Einsum-style raw q/k/v weights: two of the three einsum products go, one chunk comes."""
    output = _verified_structure("einsum_gpt", ["TFM102"], tmp_path)
    assert "ok  layers.0.attn: einsum 6->4, chunk 0->1" in output
    assert "max abs 0," in output


@pytest.mark.parametrize("stem", sorted(MANIFEST))
def test_every_model_verifies_after_all_rules(stem, tmp_path):
    """The issue's bar: verify passes on every legacy model after every rule that has landed
    (exact rules numerically; the others by checkpoint, new-key init, structure and sane outputs)."""
    source = MODELS / f"{stem}.py"
    result = migrate_source(source.read_text(), source.name, [r() for r in select_rules(["all"])])
    after = tmp_path / source.name
    after.write_text(result.migrated)
    entry = MANIFEST[stem]
    args = ["verify", str(source), str(after), "--build", entry["build"], "--select", "all"]
    for expression in entry["inputs"][:2]:
        args += ["--input", expression]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    assert "structure: torch.fx graphs of before and after by " in run.output  # a graph, not the eager record



def test_probabilities_returned_as_none_for_callers_that_ignore_them_verify(tmp_path):
    """TFM101 returns None where a module returned probabilities no caller reads: the per-instance
    check pairs the outputs element by element and says so, instead of calling the shapes different."""
    source = Path(__file__).parent.parent / "fixtures" / "sdpa" / "module_returns_ignored_probs.before.py"
    before = tmp_path / "before.py"
    before.write_text(source.read_text())
    after = _migrate(before, tmp_path / "after.py")
    assert "return out, None" in after.read_text()
    run = CliRunner().invoke(main, ["verify", str(before), str(after), "--plan", str(after.with_suffix(".plan.json")),
                                    "--build", "TwoPassBlock(16, 2)"])
    assert run.exit_code == 0, run.output
    assert "output(s) now None: no caller reads them" in run.output


def test_paired_tensors_skip_only_a_tensor_replaced_by_none():
    from tf_migrate.verify.inputs import paired_tensors

    a, b, c = torch.zeros(2), torch.ones(3), torch.ones(2)
    assert paired_tensors((a, b), (c, None)) == ([a], [c], 1)
    old, new, dropped = paired_tensors((a, b), (c,))  # a different structure is flattened, not excused
    assert (len(old), len(new), dropped) == (2, 1, 0)
    assert paired_tensors(a, None) == ([a], [], 0)  # a module that returns nothing at all is not excused
    assert paired_tensors((a, b), (None, None)) == ([a, b], [], 0)
