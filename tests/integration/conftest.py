"""Integration tests share one in-process worker per module (tests/support/inprocess.py);
tests that kill, restart or reconfigure a worker start `celery worker` processes. Tests of
the script runner get each of its backends in turn."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bus.redis_conn import connect
from bus.scripts.runner import BACKENDS
from tests.support.env import BusEnv
from tests.support.inprocess import inprocess_worker
from tests.support.paths import REDIS_URL


@pytest.fixture(scope="module")
def worker(module_env: BusEnv) -> Iterator[Any]:
    with inprocess_worker(module_env) as embedded:
        yield embedded


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
