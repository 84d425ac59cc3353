"""Generated programs: the tool never crashes and never changes a file with no candidate."""

from __future__ import annotations

import hypothesmith
from hypothesis import HealthCheck, given, settings

from tf_migrate.engine.config import Config
from tf_migrate.engine.file import has_candidates, migrate_source
from tf_migrate.engine.run import build_rules

RULES = build_rules(Config(select=["all"]))
TRIGGERS = sorted({word for rule in RULES for word in rule.triggers})


def _check(text: str) -> None:
    result = migrate_source(text, "generated.py", RULES)
    assert not [e for e in result.errors if not e.startswith("syntax error")], result.errors
    assert result.migrated == text
    assert not result.edits


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(hypothesmith.from_grammar())
def test_generated_programs_pass_through_unchanged(text):
    if not has_candidates(text, RULES):
        _check(text)
    # The same program with trigger words in a comment is parsed and analysed, and still unchanged.
    _check(text.rstrip("\n") + "\n# " + " ".join(TRIGGERS) + "\n")


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(hypothesmith.from_node())
def test_generated_syntax_trees_pass_through_unchanged(text):
    _check(text.rstrip("\n") + "\n# " + " ".join(TRIGGERS) + "\n")
