from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-goldens", action="store_true",
                     help="rewrite fixtures/*/*.after.py from the rules (review the diff!)")


@pytest.fixture
def regen(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption("--regen-goldens")


@pytest.fixture
def root() -> Path:
    return ROOT


# The long tests, marked `slow` here in one place: whole models built, trained, verified or
# benchmarked with torch, generated programs, and real torch sources (test_corpus.py and
# test_precommit.py mark themselves). `python -m pytest -m "not slow"` is the inner loop; CI runs all.
SLOW_MODULES = frozenset({"test_verify.py", "test_bench.py", "test_convert_new_keys.py", "test_property.py",
                          "test_models_all_rules.py", "test_models_e2e.py"})
SLOW_TESTS = frozenset({"test_torch_sources_resolve_like_libcst", "test_migrated_model_loads_and_trains",
                        "test_models_end_to_end", "test_tfm101_and_tfm401_compose_in_either_order",
                        "test_old_checkpoint_converts_and_matches", "test_in_memory_conversion_matches_outputs",
                        "test_migrated_model_loads_runs_and_extrapolates",
                        "test_alibi_model_after_tfm101_loads_runs_and_extrapolates"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES or getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
