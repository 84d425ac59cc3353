"""A plan written for a whole directory converts one model's checkpoint: the entries of other
models' files are left out (named in the report), with or without --source."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from convert_support import MODELS, build, convert, load_module  # noqa: E402
from tf_migrate.cli import main  # noqa: E402
from tf_migrate.convert.selection import model_plans  # noqa: E402
from tf_migrate.plan import ClassPlan, Concatenation, NewKey  # noqa: E402

MINGPT = "GPT(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=64)"


def _directory_plan(tmp_path: Path, select: str) -> tuple[Path, Path]:
    """A plan for a folder of three models: minGPT, BERT (the same q/k/v names) and the einsum GPT."""
    folder = tmp_path / "models"
    folder.mkdir()
    for stem in ("mingpt_style", "bert_style", "einsum_gpt"):
        (folder / f"{stem}.py").write_text((MODELS / f"{stem}.py").read_text())
    plan = tmp_path / "plan.json"
    result = CliRunner().invoke(main, [str(folder), "--select", select, "--output-dir", str(tmp_path / "after"),
                                       "--plan", str(plan), "--no-cache"])
    assert result.exit_code in (0, 1), result.output
    return tmp_path / "after", plan


def _checkpoint(tmp_path: Path) -> tuple[Path, dict]:
    torch.manual_seed(0)
    state = build(load_module(MODELS / "mingpt_style.py"), MINGPT).state_dict()
    path = tmp_path / "mingpt.pt"
    torch.save(state, path)
    return path, state


def test_a_directory_plan_converts_one_models_checkpoint_with_source(tmp_path: Path) -> None:
    after, plan = _directory_plan(tmp_path, "all")
    checkpoint, state = _checkpoint(tmp_path)
    assert convert(checkpoint, tmp_path / "before.pt", "--plan", plan).exit_code == 2  # SwiGLU's keys need a target
    result = convert(checkpoint, tmp_path / "out.pt", "--plan", plan, "--check-build", MINGPT,
                     "--source", after / "mingpt_style.py")
    assert result.exit_code == 0, result.output
    assert "plan entries of other models left out:" in result.output and "bert_style.py" in result.output
    converted = torch.load(tmp_path / "out.pt")
    expected = torch.cat([state[f"blocks.0.attn.{n}.weight"] for n in ("query", "key", "value")])
    torch.testing.assert_close(converted["blocks.0.attn.qkv.weight"], expected)


def test_a_directory_plan_converts_one_models_checkpoint_without_source(tmp_path: Path) -> None:
    _, plan = _directory_plan(tmp_path, "exact,TFM401")
    checkpoint, _ = _checkpoint(tmp_path)
    result = convert(checkpoint, tmp_path / "out.pt", "--plan", plan)
    assert result.exit_code == 0, result.output
    assert "einsum_gpt.py" in result.output.split("left out:")[1].splitlines()[0]  # its `pe` plan is not mingpt's
    assert "converted blocks.0.attn [CausalSelfAttention]" in result.output


def test_entries_are_picked_by_file() -> None:
    mine = ClassPlan("pkg/a.py", "Attention", ["TFM102"], concatenated=[Concatenation("qkv.weight", [
        "q.weight", "k.weight", "v.weight"])])
    theirs = ClassPlan("other/b.py", "Encoder", ["TFM201"], new=[NewKey("final_norm.weight", "ones", ["4"])])
    keys = ["layers.0.q.weight", "layers.0.k.weight", "layers.0.v.weight"]
    assert model_plans([mine, theirs], keys, None) == ([mine], ["other/b.py"])
    assert model_plans([theirs], keys, None) == ([theirs], [])
    assert model_plans([mine, theirs], ["unrelated.weight"], None) == ([mine, theirs], [])
    twin = ClassPlan("pkg/c.py", "Attention", ["TFM102"], concatenated=mine.concatenated)
    with pytest.raises(Exception, match="pass --source"):
        model_plans([mine, twin], keys, None)
