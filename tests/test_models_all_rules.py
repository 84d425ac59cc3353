"""Every legacy model migrated with ALL rules still imports, builds, loads its converted
checkpoint strictly, and trains (forward and backward), at a longer sequence too."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from helpers import MODELS, load_module, manifest, tensors  # noqa: E402
from tf_migrate.convert.state_dict import convert_state_dict  # noqa: E402
from tf_migrate.engine.file import migrate_source  # noqa: E402
from tf_migrate.engine.registry import select_rules  # noqa: E402

SPECS = manifest()


@pytest.mark.parametrize("stem", sorted(SPECS))
def test_all_rules_model_loads_and_trains(stem: str, tmp_path: Path) -> None:
    spec = SPECS[stem]
    source = MODELS / f"{stem}.py"
    result = migrate_source(source.read_text(), source.name, [r() for r in select_rules(["all"])])
    assert not result.errors, result.errors
    migrated = tmp_path / source.name
    migrated.write_text(result.migrated)
    before_module, after_module = load_module(source), load_module(migrated)
    torch.manual_seed(0)
    before = eval(spec["build"], {**vars(before_module), "torch": torch})
    after = eval(spec["build"], {**vars(after_module), "torch": torch})

    state = before.state_dict()
    if any(p.renamed or p.concatenated or p.dropped or p.new for p in result.plans):
        state, _ = convert_state_dict(state, result.plans, after.state_dict())
    after.load_state_dict(state, strict=True)

    after.train()
    torch.manual_seed(1)
    args = eval(spec["inputs"][-1], {**vars(before_module), "torch": torch})
    args = args if isinstance(args, tuple) else (args,)
    outputs = [t for t in tensors(after(*args)) if t.is_floating_point()]
    assert outputs and all(torch.isfinite(t).all() for t in outputs)
    sum(t.float().sum() for t in outputs).backward()
    grads = [p.grad for p in after.parameters() if p.requires_grad]
    assert any(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
