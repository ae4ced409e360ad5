"""Local multi-node stacks for development and tests: `msgbus services cluster up|down|status`.

A RabbitMQ cluster of three nodes (node names, AMQP, distribution and management ports and
data dirs of their own, joined with `rabbitmqctl join_cluster`) and Redis as a primary with
two replicas watched by three Sentinels. The bus reaches them the way it reaches servers on
other hosts: a `;`-separated broker URL list (kombu fails over along it) and a
`redis+sentinel://` URL (clients ask the Sentinels for the primary).

Invariants:
- every server binds 127.0.0.1, on ports apart from the single-node stack's (5672, 6379);
- `up` is idempotent: a server that answers is kept, only missing ones start, and a node
  outside the cluster is joined to it;
- `down` stops only this layout's servers (its node names and ports), never others.

Sized for a 2-core, 24 GiB machine: each RabbitMQ node's memory alarm at 1 GiB, each Redis at
512 MiB; Erlang schedulers do not busy-wait (RabbitMQ's default since 3.10, which matters
with several nodes on two cores).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bus.errors import ServicesError
from msgbus.cluster_nodes import RabbitNode, RedisServer, Sentinel, Server
from msgbus.services import (
    ServiceStatus,
    default_state_dir,
    ensure_installed,
    wait_until,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterLayout:
    """Names and ports of one stack. Node i (1-based) of RabbitMQ listens on
    rabbit_port + i - 1; Redis and Sentinel likewise from their first ports; the first Redis
    server starts as the primary."""

    state_dir: Path
    name: str = "c"
    size: int = 3
    rabbit_port: int = 5701
    redis_port: int = 6401
    sentinel_port: int = 26401
    service: str = "msgbus"
    management: bool = True
    rabbit_memory: str = "1GiB"
    redis_memory: str = "512mb"
    # Sentinel's failure detection: a primary silent this long is down (production setups
    # use 5-30 s; a local stack fails over within seconds so tests can watch it happen).
    down_after_ms: int = 2000
    failover_timeout_ms: int = 10_000

    @classmethod
    def default(cls) -> ClusterLayout:
        """The development stack of `msgbus services cluster up`."""
        return cls(state_dir=default_state_dir() / "cluster")


class LocalCluster:
    def __init__(self, layout: ClusterLayout) -> None:
        self.layout = layout
        n, state = layout.size, layout.state_dir
        self.rabbits = [
            RabbitNode(
                state,
                f"msgbus-{layout.name}{i + 1}@localhost",
                layout.rabbit_port + i,
                management=layout.management,
            )
            for i in range(n)
        ]
        self.redis = [RedisServer(state, layout.redis_port + i) for i in range(n)]
        self.sentinels = [Sentinel(state, layout.sentinel_port + i) for i in range(n)]

    # -- what clients are given ----------------------------------------------------------

    def broker_url(self, vhost: str = "", order: Iterable[int] | None = None) -> str:
        """kombu's failover list: ``amqp://...:5701/v;amqp://...:5702/v;...``. `order`
        (node indexes) puts other nodes first, as each host would list its nearest."""
        nodes = [self.rabbits[i] for i in order] if order is not None else self.rabbits
        return ";".join(node.url(vhost) for node in nodes)

    def redis_url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.layout.service}/{db}"

    def env(self, vhost: str = "") -> dict[str, str]:
        """The settings that point the bus at this stack."""
        env = {
            "MESSAGE_BUS_BROKER_URL": self.broker_url(vhost),
            "MESSAGE_BUS_REDIS_URL": self.redis_url(),
            "MESSAGE_BUS_QUEUE_TYPE": "quorum",
        }
        if self.layout.management:
            api = f"http://guest:guest@127.0.0.1:{self.rabbits[0].port + 10000}/api/"
            env["MESSAGE_BUS_BROKER_API_URL"] = api
        return env

    # -- up / down / status ----------------------------------------------------------------

    def up(self, timeout: float = 180) -> list[ServiceStatus]:
        ensure_installed("redis-server")
        ensure_installed("rabbitmq-server")
        started = time.monotonic()
        self._redis_up(timeout)
        self._rabbit_up(timeout)
        statuses = self.status()
        logger.info("cluster up in %.1fs", time.monotonic() - started)
        return statuses

    def _redis_up(self, timeout: float) -> None:
        lay = self.layout
        primary = lay.redis_port
        for server in self.redis:
            server.write_config(primary, lay.redis_memory)
            if not server.answers():
                server.start()
        quorum = lay.size // 2 + 1
        for sentinel in self.sentinels:
            sentinel.write_sentinel_config(
                lay.service, primary, quorum, lay.down_after_ms, lay.failover_timeout_ms
            )
            if not sentinel.answers():
                sentinel.start()
        wait_until(self.redis_settled, timeout, "Redis replicas and Sentinels", self._redis_logs())

    def redis_settled(self) -> bool:
        """Every Sentinel sees the same primary, the other Sentinels and every replica
        in sync: a failover could happen now."""
        views = [s.master(self.layout.service) for s in self.sentinels]
        if not all(views) or len({v.get("port") for v in views}) != 1:
            return False
        others, replicas = self.layout.size - 1, self.layout.size - 1
        if any(
            int(v.get("num-other-sentinels", 0)) < others or int(v.get("num-slaves", 0)) < replicas
            for v in views
        ):
            return False
        if "s_down" in views[0].get("flags", "") or "o_down" in views[0].get("flags", ""):
            return False
        primary = self.primary()
        return primary is not None and primary.info().get("connected_slaves") == str(replicas)

    def _redis_logs(self) -> str:
        return ", ".join(str(s.log) for s in [*self.redis, *self.sentinels])

    def _rabbit_up(self, timeout: float) -> None:
        missing = [node for node in self.rabbits if not node.answers()]
        for node in self.rabbits:
            node.write_config(self.layout.rabbit_memory)
        first_ever = not _cookie_exists()
        if first_ever and missing:
            # The first node to start writes the Erlang cookie the others must share.
            missing[0].start()
            missing[0].wait_ready(timeout)
            missing = missing[1:]
        for node in missing:
            node.start()
        _parallel([partial(node.wait_ready, timeout) for node in missing])
        seed = self.rabbits[0]
        for node in self.rabbits[1:]:
            running = node.cluster_status().get("running_nodes", [])
            if seed.name not in running:
                logger.info("joining %s to %s", node.name, seed.name)
                node.join(seed.name)
        wait_until(self.rabbit_settled, timeout, "the RabbitMQ cluster", str(seed.log))

    def rabbit_settled(self) -> bool:
        """Every node runs and is a member of the one cluster."""
        return sorted(self._running_nodes()) == sorted(node.name for node in self.rabbits)

    def _running_nodes(self) -> list[str]:
        """The cluster's running nodes as the first node that answers sees them."""
        for node in self.rabbits:
            if node.answers():
                running: list[str] = node.cluster_status().get("running_nodes", [])
                return running
        return []

    def down(self, purge: bool = False) -> list[ServiceStatus]:
        """Stops this layout's servers; `purge` also deletes their data (tests do)."""
        out = []
        # Sentinels first, so that stopping the primary is not taken for a failure.
        redis_side: list[Server] = [*self.sentinels, *reversed(self.redis)]
        for server in redis_side:
            was = server.pid() is not None
            server.stop()
            out.append(_stopped(server, was))
        nodes = list(self.rabbits)
        was_running = [node.pid() is not None for node in nodes]
        _parallel([node.stop for node in nodes])
        out += [_stopped(node, was) for node, was in zip(nodes, was_running, strict=True)]
        if purge:
            for server in [*self.sentinels, *self.redis, *self.rabbits]:
                server.purge()
        return out

    def status(self) -> list[ServiceStatus]:
        out = []
        running = set(self._running_nodes())
        for node in self.rabbits:
            up = node.answers()
            member = "in the cluster" if node.name in running else "not clustered"
            detail = f"{node.name}, {member}" if up else f"{node.name}, stopped"
            out.append(ServiceStatus("rabbitmq", node.url(), up, True, detail))
        for server in self.redis:
            up = server.answers()
            role = server.info().get("role", "?") if up else "stopped"
            role = "primary" if role == "master" else "replica" if role == "slave" else role
            out.append(ServiceStatus("redis", f"redis://127.0.0.1:{server.port}", up, True, role))
        for sentinel in self.sentinels:
            up = sentinel.answers()
            view = sentinel.master(self.layout.service) if up else {}
            detail = f"primary at {view.get('ip')}:{view.get('port')}" if view else "no answer"
            out.append(ServiceStatus("sentinel", f"127.0.0.1:{sentinel.port}", up, True, detail))
        return out

    # -- what failure injection needs ------------------------------------------------------

    def primary(self) -> RedisServer | None:
        """The Redis server the Sentinels name as primary (the majority's answer)."""
        ports = [s.master(self.layout.service).get("port") for s in self.sentinels]
        votes = [p for p in ports if p]
        if not votes:
            return None
        port = max(set(votes), key=votes.count)
        return next((r for r in self.redis if str(r.port) == port), None)

    def rabbit(self, name: str) -> RabbitNode:
        return next(node for node in self.rabbits if node.name == name)

    def queue_leader(self, vhost: str, queue: str) -> RabbitNode:
        """The node leading quorum queue `queue` now."""
        for node in self.rabbits:
            if not node.answers():
                continue
            listing = node.ctl("list_queues", "-p", vhost, "name", "leader", "--quiet", check=False)
            for line in listing.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return self.rabbit(parts[1])
        raise ServicesError(f"no running node knows quorum queue {queue} in vhost {vhost}")

    def ensure_vhost(self, vhost: str, user: str = "guest") -> None:
        node = next(n for n in self.rabbits if n.answers())
        out = node.ctl("add_vhost", vhost, check=False)
        if "already exists" not in out and "Adding vhost" not in out:
            raise ServicesError(f"rabbitmqctl add_vhost {vhost} failed: {out}")
        node.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        for node in self.rabbits:
            if node.answers():
                node.ctl("delete_vhost", vhost, check=False)
                return


def _cookie_exists() -> bool:
    home = Path("/var/lib/rabbitmq") if os.geteuid() == 0 else Path.home()
    return (home / ".erlang.cookie").exists()


def _parallel(calls: list[Callable[[], object]]) -> None:
    """Runs the calls at once (node starts and stops each take seconds); raises the first
    error after all have finished."""
    if not calls:
        return
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
    for future in futures:
        future.result()


def _stopped(server: Server, was_running: bool) -> ServiceStatus:
    url = server.url() if isinstance(server, RabbitNode) else f"127.0.0.1:{server.port}"
    return ServiceStatus(
        server.kind, url, False, True, "stopped" if was_running else "was not running"
    )
