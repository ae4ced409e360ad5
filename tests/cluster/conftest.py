"""The local multi-node stack for tests: a 3-node RabbitMQ cluster and Redis with two
replicas and three Sentinels, started once per session on ports of its own (apart from the
single-node stack and from the development cluster of `msgbus services cluster up`), and
stopped and deleted at the end. Each test gets a vhost and key prefix on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bus.cluster import ClusterLayout, LocalCluster
from tests.conftest import ARTIFACTS, BusEnv

LAYOUT = ClusterLayout(
    state_dir=ARTIFACTS / "cluster-stack",
    name="t",
    rabbit_port=5711,
    redis_port=6411,
    sentinel_port=26411,
    management=False,  # boots faster; Flower's broker tab is not what these tests check
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    stack = LocalCluster(LAYOUT)
    stack.down(purge=True)  # what a run that died left behind
    stack.up()
    try:
        yield stack
    finally:
        stack.down(purge=True)


@pytest.fixture
def cluster_env(cluster: LocalCluster) -> Iterator[BusEnv]:
    """A bus of its own on the cluster: a vhost, a key prefix, quorum queues."""
    vhost = f"c-{uuid.uuid4().hex[:10]}"
    cluster.ensure_vhost(vhost)
    env = BusEnv(vhost=vhost, prefix=f"test:{vhost}:", overrides=cluster.env(vhost))
    try:
        yield env
    finally:
        for worker in env.workers:
            worker.stop()
        cluster.delete_vhost(vhost)
        delete_keys(cluster, env.prefix)


def delete_keys(cluster: LocalCluster, prefix: str) -> None:
    from bus.redis_conn import connect

    client = connect(cluster.redis_url())
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    except Exception:  # noqa: BLE001 - cleanup after a test that broke Redis on purpose
        pass
    finally:
        client.close()


def primary_client(cluster: LocalCluster) -> Any:
    """A plain client on the server the Sentinels name as primary now."""
    import redis

    primary = cluster.primary()
    assert primary is not None, "the Sentinels name no primary"
    return redis.Redis(port=primary.port, decode_responses=True)
