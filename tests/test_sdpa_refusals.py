"""TFM101 refusals on code outside the common spellings: each names the real reason and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tf_migrate.engine import migrate_source
from tf_migrate.rules.sdpa import EinsumAttentionToSdpa

FOLDER = Path(__file__).resolve().parent.parent / "fixtures" / "sdpa"


def _refusals(case: str):
    path = FOLDER / f"{case}.noop.py"
    result = migrate_source(path.read_text(), f"sdpa/{path.name}", [EinsumAttentionToSdpa()])
    assert not result.errors and not result.edits
    return result.refusals


@pytest.mark.parametrize("case, line, words", [
    ("query_mutated_in_place", 20, ["`q` is changed in place at line 20"]),
    ("fill_value_name_reused", 18, ["`att` are read again at line 18"]),
    ("strictly_causal_empty_row", 23, ["hides the diagonal too", "the first query sees no key"]),
])
def test_refusal_says_why(case: str, line: int, words: list[str]) -> None:
    refusals = _refusals(case)
    assert len(refusals) == 1
    assert refusals[0].line == line
    assert all(w in refusals[0].reason for w in words), refusals[0].reason
