"""Fixtures of the integration tests that run Lua through bus.scripts.ScriptRunner."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bus.redis_conn import connect
from bus.scripts.runner import BACKENDS
from tests.support.paths import REDIS_URL


@pytest.fixture(params=sorted(BACKENDS))
def script_backend(request: pytest.FixtureRequest) -> Any:
    """Each backend of the runner in turn: a test of the runner holds for both."""
    return BACKENDS[request.param]


@pytest.fixture
def redis_client(services: None) -> Iterator[Any]:
    client = connect(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def redis_key(redis_client: Any) -> Iterator[str]:
    """A key of the test's own; it and the keys named after it are deleted after."""
    name = f"test:scripts:{uuid.uuid4().hex}"
    yield name
    for key in redis_client.scan_iter(match=f"{name}*"):
        redis_client.delete(key)
