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
