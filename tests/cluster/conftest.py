"""The local multi-node stack for tests: a 3-node RabbitMQ cluster and Redis with two
replicas and three Sentinels, started once per session on ports of its own (apart from the
single-node stack and from the development cluster of `msgbus services cluster up`), and
stopped and deleted at the end. Each test gets a vhost and key prefix on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from kombu import Connection

from bus import topology
from bus.redis_conn import connect
from bus.settings import Settings
from msgbus.cluster import ClusterLayout, LocalCluster
from tests.support.env import BusEnv, Worker
from tests.support.paths import ARTIFACTS

LAYOUT = ClusterLayout(
    state_dir=ARTIFACTS / "cluster-stack",
    name="t",
    rabbit_port=5711,
    redis_port=6411,
    sentinel_port=26411,
    management=False,  # boots faster; Flower's broker tab is not what these tests check
)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    stack = LocalCluster(LAYOUT)
    stack.down(purge=True)  # what a run that died left behind
    stack.up()
    try:
        yield stack
    finally:
        stack.down(purge=True)


@pytest.fixture(scope="module")
def cluster_vhost(cluster: LocalCluster) -> Iterator[str]:
    """One vhost per module: its ~30 quorum queues (the bus's and Celery's delayed-delivery
    ones) are declared once, not per test."""
    vhost = f"c-{uuid.uuid4().hex[:10]}"
    cluster.ensure_vhost(vhost)
    with Connection(cluster.broker_url(vhost)) as conn:  # the queues exist before any test
        topology.declare(conn.default_channel, Settings(queue_type="quorum"))
    yield vhost
    cluster.delete_vhost(vhost)


@pytest.fixture
def cluster_env(cluster: LocalCluster, cluster_vhost: str) -> Iterator[BusEnv]:
    """A bus of its own on the cluster: the module's vhost, a key prefix of its own."""
    prefix = f"test:{cluster_vhost}:{uuid.uuid4().hex[:6]}:"
    env = BusEnv(vhost=cluster_vhost, prefix=prefix, overrides=cluster.env(cluster_vhost))
    try:
        yield env
    finally:
        stop_all(env.workers)
        delete_keys(cluster, env.prefix)


def start_workers(env: BusEnv, specs: list[dict[str, Any]]) -> list[Worker]:
    """Starts several workers at once (each takes seconds to be ready)."""
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        return list(pool.map(lambda spec: env.start_worker(**spec), specs))


def stop_all(workers: list[Worker]) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(workers))) as pool:
        list(pool.map(Worker.stop, workers))


def delete_keys(cluster: LocalCluster, prefix: str) -> None:
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
    primary = cluster.primary()
    assert primary is not None, "the Sentinels name no primary"
    return redis.Redis(port=primary.port, decode_responses=True)
