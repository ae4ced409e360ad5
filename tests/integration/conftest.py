"""Integration tests share one in-process worker per module (tests/support/inprocess.py);
tests that kill, restart or reconfigure a worker start `celery worker` processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.env import BusEnv
from tests.support.inprocess import inprocess_worker


@pytest.fixture(scope="module")
def worker(module_env: BusEnv) -> Iterator[Any]:
    with inprocess_worker(module_env) as embedded:
        yield embedded
