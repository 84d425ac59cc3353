"""End to end on the legacy models: migrate with the exact rules, convert the original weights
through the checkpoint plan, load them strictly, and compare outputs in eval mode."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from helpers import MODELS, load_module, manifest, meets_expectation, tensors  # noqa: E402
from tf_migrate.convert.state_dict import convert_state_dict  # noqa: E402
from tf_migrate.engine.file import migrate_source  # noqa: E402
from tf_migrate.engine.registry import select_rules  # noqa: E402

SPECS = manifest()


def _migrate(stem: str, tmp_path: Path, select: list[str]):
    source = MODELS / f"{stem}.py"
    rules = [rule() for rule in select_rules(select)]
    result = migrate_source(source.read_text(), f"{stem}.py", rules)
    assert not result.errors, result.errors
    migrated = tmp_path / f"{stem}.py"
    migrated.write_text(result.migrated)
    return source, migrated, result


@pytest.mark.parametrize("stem", sorted(SPECS))
def test_exact_rules_keep_the_function(stem: str, tmp_path: Path) -> None:
    spec = SPECS[stem]
    source, migrated, result = _migrate(stem, tmp_path, ["exact"])
    before_module, after_module = load_module(source), load_module(migrated)
    namespace = lambda m: {**vars(m), "torch": torch}  # noqa: E731
    torch.manual_seed(0)
    before = eval(spec["build"], namespace(before_module)).eval()
    after = eval(spec["build"], namespace(after_module)).eval()

    state = before.state_dict()
    if any(p.renamed or p.concatenated or p.dropped or p.new for p in result.plans):
        state, _ = convert_state_dict(state, result.plans, after.state_dict())
    after.load_state_dict(state, strict=True)

    for index, expression in enumerate(spec["inputs"]):
        torch.manual_seed(100 + index)
        args = eval(expression, namespace(before_module))
        args = args if isinstance(args, tuple) else (args,)
        with torch.no_grad():
            expected, got = tensors(before(*args)), tensors(after(*args))
        assert len(expected) == len(got)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("code", ["TFM101", "TFM102"])
@pytest.mark.parametrize("stem", sorted(SPECS))
def test_expected_exact_rule_behaviour(stem: str, code: str, tmp_path: Path) -> None:
    """What the manifest says each exact rule must do on each model: apply, refuse or leave alone."""
    expected = SPECS[stem].get("expect", {}).get(code)
    _, _, result = _migrate(stem, tmp_path, [code])
    assert meets_expectation(expected, result, code), (expected, result.edits, result.refusals)
