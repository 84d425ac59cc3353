"""Plans that add keys: found through the migrated model (--check-build / target=), and the one
NewKey.init vocabulary shared by the rules, the converter and the verifier."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from convert_support import (MODELS, build, convert, load_module, manifest, migrate,  # noqa: E402
                             save_sharded)
from tf_migrate.convert.errors import ConvertError  # noqa: E402
from tf_migrate.convert.state_dict import convert_state_dict  # noqa: E402
from tf_migrate.engine.file import migrate_source  # noqa: E402
from tf_migrate.plan import ClassPlan, NewKey, parse_init  # noqa: E402
from tf_migrate.engine.registry import select_rules  # noqa: E402


def _all_rules(stem: str, tmp_path: Path):
    source = MODELS / f"{stem}.py"
    result = migrate_source(source.read_text(), source.name, [r() for r in select_rules(["all"])])
    (tmp_path / "after.py").write_text(result.migrated)
    entry = manifest()[stem]
    torch.manual_seed(0)
    old = build(load_module(source), entry["build"])
    new = build(load_module(tmp_path / "after.py"), entry["build"])
    return result.plans, old, new


def test_init_vocabulary() -> None:
    assert parse_init("normal(std=0.02)") == ("normal", 0.02)
    assert parse_init("default") == ("default", None)
    with pytest.raises(ValueError, match="unknown init"):
        NewKey("w.weight", "nn.Linear default (kaiming_uniform)")


def test_every_rule_writes_known_inits() -> None:
    for stem in manifest():
        source = MODELS / f"{stem}.py"
        result = migrate_source(source.read_text(), source.name, [r() for r in select_rules(["all"])])
        for plan in result.plans:
            for new in plan.new:
                parse_init(new.init)
                assert NewKey(**new.to_json()) == new


def test_new_only_plans_found_through_the_target(tmp_path: Path) -> None:
    """Encoder and Decoder both add `final_norm`; the FFN's gate `w_3` starts as the fresh model's."""
    plans, old, new = _all_rules("annotated_encdec", tmp_path)
    fresh = new.state_dict()
    state, keymap = convert_state_dict(old.state_dict(), plans, fresh)
    new.load_state_dict(state, strict=True)
    for stack in ("encoder", "decoder"):
        assert torch.equal(state[f"{stack}.final_norm.weight"], torch.ones_like(fresh[f"{stack}.final_norm.weight"]))
        assert torch.equal(state[f"{stack}.final_norm.bias"], torch.zeros_like(fresh[f"{stack}.final_norm.bias"]))
    gate = "encoder.layers.1.feed_forward.w_3.weight"
    assert torch.equal(state[gate], fresh[gate]) and state[gate].data_ptr() != fresh[gate].data_ptr()
    kept = "encoder.layers.1.feed_forward.w_1.weight"
    assert torch.equal(state[kept], old.state_dict()[kept])
    labels = {i.prefix: i.label for i in keymap.instances}
    assert labels["encoder."] == labels["decoder."] == "Encoder or Decoder"
    assert labels["encoder.layers.0.feed_forward."] == "PositionwiseFeedForward"
    with pytest.raises(ConvertError, match="--check-build EXPR --source AFTER.py"):
        convert_state_dict(old.state_dict(), plans)


def test_default_init_needs_the_target() -> None:
    state = {"fc1.weight": torch.zeros(4, 3)}
    plan = ClassPlan("m.py", "M", renamed={"fc1.weight": "w1.weight"}, new=[NewKey("w3.weight", "default", ["4", "3"])])
    with pytest.raises(ConvertError, match="init 'default'.*--check-build EXPR"):
        convert_state_dict(state, [plan])
    target = {"w1.weight": torch.zeros(4, 3), "w3.weight": torch.full((4, 3), 7.0)}
    converted, _ = convert_state_dict(state, [plan], target)
    assert torch.equal(converted["w3.weight"], target["w3.weight"])


@pytest.mark.parametrize("fmt", ["pt", "sharded"])
def test_cli_all_rules_checkpoint_needs_check_build(fmt: str, tmp_path: Path) -> None:
    entry = manifest()["mingpt_style"]
    torch.manual_seed(0)
    old = build(load_module(MODELS / "mingpt_style.py"), entry["build"])
    after, plan = migrate("mingpt_style", tmp_path, select="all")
    source = tmp_path / "old.pt" if fmt == "pt" else tmp_path / "old_sharded"
    torch.save(old.state_dict(), source) if fmt == "pt" else save_sharded(old.state_dict(), source)
    out = tmp_path / ("new.pt" if fmt == "pt" else "new_sharded")

    before = sorted(os.listdir(tmp_path))
    result = convert(source, out, "--plan", plan)
    assert result.exit_code == 2, result.output
    assert "MLP" in result.output and "--check-build EXPR --source AFTER.py" in result.output
    assert sorted(os.listdir(tmp_path)) == before

    result = convert(source, out, "--plan", plan, "--check-build", entry["build"], "--source", after)
    assert result.exit_code == 0, result.output
    assert "new c_fc_gate.weight" in result.output and "init=default" in result.output
    assert "loads strictly" in result.output


def test_unknown_init_in_a_plan_file_is_refused(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "classes": [{"file": "m.py", "class": "M", "new": [
        {"key": "g.weight", "init": "kaiming, probably"}]}]}))
    torch.save({"x": torch.zeros(1)}, tmp_path / "old.pt")
    result = convert(tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan)
    assert result.exit_code == 2 and "unknown init" in result.output, result.output


def test_verify_accepts_the_vocabulary() -> None:
    from tf_migrate.verify.checkpoint import _check_init

    assert _check_init(torch.randn(3, 3), "default").startswith("ok")
    assert _check_init(torch.eye(3), "identity") == "ok"
    assert _check_init(torch.ones(3), "identity") == "ok"
    assert _check_init(torch.ones(3), "zeros").startswith("not zeros")
    assert _check_init(torch.randn(3), "normal(std=0.02)").startswith("not checked")
