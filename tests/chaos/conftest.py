from __future__ import annotations

import pytest


@pytest.fixture
def burst(request: pytest.FixtureRequest) -> int:
    return 5000 if request.config.getoption("--chaos-long") else 2000


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--chaos-long"))
