"""Golden before/after pairs, noop files and idempotence, for every rule's fixture folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import FIXTURES, rule_folders, rule_for_folder
from tf_migrate.engine.file import migrate_source
from tf_migrate.engine.registry import all_rules


def _cases(suffix: str) -> list[Path]:
    return sorted(p for folder in rule_folders() for p in folder.glob(f"*{suffix}"))


def _run(path: Path, text: str):
    rule = rule_for_folder(path.parent.name)
    assert rule is not None, f"{path.parent} has no rule module of the same name"
    result = migrate_source(text, str(path.relative_to(FIXTURES)), [rule()])
    assert not result.errors, result.errors
    return result


@pytest.mark.parametrize("before", _cases(".before.py"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden(before: Path, regen: bool) -> None:
    after = before.with_name(before.name.replace(".before.py", ".after.py"))
    result = _run(before, before.read_text())
    assert result.changed, f"{before.name}: the rule did not fire; refusals: {result.refusals}"
    if regen:
        after.write_text(result.migrated)
    assert after.exists(), f"missing golden {after.name} (run pytest --regen-goldens and review)"
    assert result.migrated == after.read_text()


@pytest.mark.parametrize("after", _cases(".after.py"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_idempotent(after: Path) -> None:
    text = after.read_text()
    result = _run(after, text)
    assert result.migrated == text
    assert not result.edits


@pytest.mark.parametrize("noop", _cases(".noop.py"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_noop_is_byte_identical(noop: Path) -> None:
    text = noop.read_text()
    result = _run(noop, text)
    assert result.migrated == text
    assert not result.edits


def test_every_rule_has_fixtures_and_every_folder_a_rule() -> None:
    folders = {p.name for p in rule_folders()}
    modules = {rule.__module__.rsplit(".", 1)[-1] for rule in all_rules()}
    assert folders == modules
    for folder in folders:
        assert list((FIXTURES / folder).glob("*.before.py")), f"{folder}: no golden case"
        assert list((FIXTURES / folder).glob("*.noop.py")), f"{folder}: no noop case"
