"""Shared fixtures: real Redis and RabbitMQ, isolated per test module by a vhost and a key
prefix, and real `celery worker` processes that drain and stop."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from msgbus.services import delete_vhost, ensure_vhost, services_up
from tests.support.env import BusEnv, Worker, delete_prefix
from tests.support.paths import BROKER_URL, REDIS_URL

# Speed is the benchmark's to measure: a property test on a busy machine is not failed for
# taking over hypothesis's default 200 ms per example.
hypothesis_settings.register_profile("bus", deadline=None)
hypothesis_settings.load_profile("bus")


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist hands out a `--dist loadgroup` run's groups sorted by their count of
    # tests unless told not to (--loadscope-reorder is its default), which put the
    # one-test modules that take minutes (the bench, `msgbus up`'s signals) among the last.
    # The order pytest_collection_modifyitems gives them below (the longest first) is kept.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-long",
        action="store_true",
        help="run the long failure-injection versions (5,000-message bursts)",
    )


@pytest.fixture
def burst(request: pytest.FixtureRequest) -> int:
    """Messages per failure-injection burst: 2,000, or 5,000 with --chaos-long."""
    return 5000 if request.config.getoption("--chaos-long") else 2000


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--chaos-long"))


OPT_IN_MARKERS = ("interactive_channel",)


# Modules that take minutes on one worker (`--durations`), longest first.
LONGEST_MODULES = (
    "tests/chaos/test_chaos.py",
    "tests/e2e/test_bench.py",
    "tests/e2e/test_up_signals.py",
    "tests/e2e/test_hostile_content.py",
)


def _later(item: pytest.Item) -> int:
    """Where a module comes among the longest (the rest keep their order after them)."""
    module = item.nodeid.split("::")[0]
    return LONGEST_MODULES.index(module) if module in LONGEST_MODULES else len(LONGEST_MODULES)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Opt-in tests run only when `-m` names their marker; otherwise they are deselected.
    Under pytest-xdist (`--dist loadgroup`) a module's tests stay on one worker, so its
    module-scoped bus and worker are built once, and all of tests/cluster shares one worker:
    the session's multi-node stack listens on fixed ports, and they come first."""
    for item in items:
        group = "cluster" if item.get_closest_marker("cluster") else item.nodeid.split("::")[0]
        assert "@" not in group, group
        item.add_marker(pytest.mark.xdist_group(group))
    # The longest chains a single worker runs (the cluster tests, then the longest modules)
    # are handed out first: they end while the other workers still have modules to take.
    items.sort(key=lambda item: (not item.get_closest_marker("cluster"), _later(item)))
    chosen = config.getoption("markexpr", "") or ""
    wanted = [m for m in OPT_IN_MARKERS if m not in chosen]
    if not wanted:
        return
    keep = [i for i in items if not any(i.get_closest_marker(m) for m in wanted)]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def services() -> None:
    services_up(REDIS_URL, BROKER_URL)


def _new_env(request: pytest.FixtureRequest) -> Iterator[BusEnv]:
    vhost = f"t-{uuid.uuid4().hex[:10]}"
    ensure_vhost(BROKER_URL, vhost)
    env = BusEnv(vhost=vhost, prefix=f"test:{vhost}:")
    try:
        yield env
    finally:
        # The vhost and the keys go next: nothing of them needs a warm stop (~2 s each).
        for worker in env.workers:
            worker.kill()
        delete_vhost(BROKER_URL, vhost)
        delete_prefix(env.prefix)


@pytest.fixture(scope="module")
def module_env(services: None, request: pytest.FixtureRequest) -> Iterator[BusEnv]:
    """A bus shared by a test module (tests use their own agent names)."""
    yield from _new_env(request)


@pytest.fixture
def fresh_env(services: None, request: pytest.FixtureRequest) -> Iterator[BusEnv]:
    """A bus of its own for one test (for tests that break or stop things)."""
    yield from _new_env(request)


@pytest.fixture(scope="module")
def worker(module_env: BusEnv) -> Worker:
    return module_env.start_worker()


@pytest.fixture
def bus(module_env: BusEnv, worker: Worker) -> Iterator[Any]:
    client = module_env.bus()
    yield client
    client.close()


@pytest.fixture
def agents() -> Callable[[str], str]:
    """Unique agent ids per test, readable in failures: agents('alice') -> 'alice-1a2b3c'."""
    suffix = uuid.uuid4().hex[:6]
    return lambda name: f"{name}-{suffix}"
