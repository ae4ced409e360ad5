"""The local multi-node stack and the bus on it: a broker URL list over three RabbitMQ
nodes with quorum queues spread among them, Redis found through Sentinel everywhere, and
writes confirmed by replicas when MESSAGE_BUS_REDIS_MIN_REPLICAS asks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from bus.tokens import TokenFile
from msgbus.services import services_status, services_up
from tests.cluster.conftest import primary_client
from tests.support.mcp import call, http
from tests.support.paths import ROOT
from tests.support.processes import stop
from tests.support.waiting import wait_for
from tests.support.web import start_http_server

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def test_the_stack_is_three_clustered_nodes_a_primary_two_replicas_and_agreeing_sentinels(
    cluster,
):
    statuses = cluster.status()
    rabbits = [s for s in statuses if s.name == "rabbitmq"]
    assert [s.running and s.detail.endswith("in the cluster") for s in rabbits] == [True] * 3
    roles = sorted(s.detail for s in statuses if s.name == "redis")
    assert roles == ["primary", "replica", "replica"]
    views = {s.detail for s in statuses if s.name == "sentinel"}
    assert len(views) == 1 and views.pop().startswith("primary at 127.0.0.1:")
    pids = [server.pid() for server in [*cluster.rabbits, *cluster.redis, *cluster.sentinels]]

    again = cluster.up()  # idempotent: what answers is kept, nothing restarts

    assert [(s.name, s.running, s.detail) for s in again] == [
        (s.name, s.running, s.detail) for s in statuses
    ]
    assert [s.pid() for s in [*cluster.rabbits, *cluster.redis, *cluster.sentinels]] == pids


def test_services_up_checks_a_multi_host_stack_but_starts_nothing(cluster, tmp_path):
    env = cluster.env()
    statuses = services_up(env["MESSAGE_BUS_REDIS_URL"], env["MESSAGE_BUS_BROKER_URL"], tmp_path)
    assert [(s.name, s.running, s.managed) for s in statuses] == [
        ("redis", True, False),
        ("rabbitmq", True, False),
    ]
    assert all("several hosts" in s.detail for s in statuses)
    # A list whose hosts all fail to answer is an error that says how to start a local one.
    with pytest.raises(Exception, match="msgbus services cluster up"):
        services_up(env["MESSAGE_BUS_REDIS_URL"], "amqp://127.0.0.1:1//;amqp://127.0.0.1:2//")
    assert [s.running for s in services_status(env["MESSAGE_BUS_REDIS_URL"], "amqp://x:1//")] == [
        True,
        False,
    ]


def test_the_bus_delivers_on_quorum_queues_spread_over_the_nodes(cluster, cluster_env, agents):
    cluster_env.start_worker()
    bus = cluster_env.bus()
    sender, reader = agents("s"), agents("r")
    receipts = [
        bus.send_message({"from": sender, "to": reader, "payload": p, "metadata": {"priority": p}})
        for p in ("critical", "high", "normal", "low")
    ]
    got: list = []
    wait_for(
        lambda: got.extend(bus.read(reader, limit=10, wait=0.5)) or len(got) >= 4,
        30,
        "four deliveries",
    )
    assert sorted(m.payload for m in got) == ["critical", "high", "low", "normal"]
    bus.ack(reader, [m.id for m in got])
    assert {bus.status(r.id).status.value for r in receipts} == {"acked"}

    leaders = {q: cluster.queue_leader(cluster_env.vhost, q).name for q in _bus_queues()}
    assert len(set(leaders.values())) >= 2, f"quorum leaders all on one node: {leaders}"
    listing = cluster.rabbits[0].ctl(
        "list_queues", "-p", cluster_env.vhost, "name", "type", "members", "--quiet"
    )
    for line in listing.splitlines():
        name, kind, *members = line.split(maxsplit=2)
        if name in _bus_queues():
            assert kind == "quorum" and members[0].count("@localhost") == 3, line

    health = bus.health()
    assert health.ready and health.redis == "ok" and health.broker == "ok", health
    # The status was written on the primary the Sentinels name.
    primary = primary_client(cluster)
    assert primary.hget(f"{cluster_env.prefix}status:{receipts[0].id}", "status") == "acked"


def _bus_queues() -> list[str]:
    return ["bus.critical", "bus.high", "bus.normal", "bus.low", "bus.dead_letter"]


def test_two_replicas_confirm_each_delivery_and_a_third_that_does_not_exist_makes_it_retry(
    cluster, cluster_env, agents
):
    sender, reader = agents("s"), agents("r")
    cluster_env.overrides["MESSAGE_BUS_REDIS_MIN_REPLICAS"] = "2"
    worker = cluster_env.start_worker()
    bus = cluster_env.bus()
    confirmed = bus.send_message({"from": sender, "to": reader, "payload": "two replicas"})
    [message] = wait_for(lambda: bus.read(reader, limit=5, wait=0.5), 30, "the delivery")
    assert message.id == confirmed.id
    worker.stop()

    # Three replicas cannot confirm (there are two): the delivery is retried, never acked.
    cluster_env.overrides |= {
        "MESSAGE_BUS_REDIS_MIN_REPLICAS": "3",
        "MESSAGE_BUS_REDIS_REPLICA_TIMEOUT": "0.1",
    }
    cluster_env.start_worker()
    refused = bus.send_message(
        {"from": sender, "to": reader, "payload": "three", "metadata": {"max_retries": 2}}
    )
    letter = wait_for(
        lambda: {d.id: d for d in bus.dead_letters()}.get(refused.id),
        60,
        "the delivery to run out of retries and be dead-lettered",
    )
    assert letter.reason == "retries_exhausted"
    assert "MESSAGE_BUS_REDIS_MIN_REPLICAS" in (letter.error or ""), letter
    assert confirmed.id not in {d.id for d in bus.dead_letters()}


def test_the_cluster_commands_print_settings_and_a_status_whose_exit_code_says_it_all():

    def msgbus(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "msgbus", "services", "cluster", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    env = msgbus("env")
    assert env.returncode == 0
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in env.stdout.strip().splitlines()
    )
    assert exports["MESSAGE_BUS_BROKER_URL"].count(";") == 2
    assert exports["MESSAGE_BUS_REDIS_URL"].startswith("'redis+sentinel://")
    status = msgbus("status", "--json")
    servers = json.loads(status.stdout)
    assert sorted({s["name"] for s in servers}) == ["rabbitmq", "redis", "sentinel"]
    assert len(servers) == 9
    assert status.returncode == (0 if all(s["running"] for s in servers) else 1)


def test_the_mcp_http_server_on_the_cluster_sends_and_wakes_a_long_poll(
    cluster_env, agents, tmp_path
):
    alice, bob = agents("alice"), agents("bob")
    tokens = tmp_path / "tokens.json"
    issued = {name: TokenFile(tokens).create(name) for name in (alice, bob)}
    cluster_env.start_worker()
    server, url = start_http_server(cluster_env, "mcp-cluster", tokens)

    async def scenario() -> None:
        async with http(url, issued[alice]) as a, http(url, issued[bob]) as b:
            waiting = asyncio.create_task(call(b, "read_messages", {"wait_seconds": 30}))
            # bob's long poll has looked once (and watches his inbox) before alice sends.
            await asyncio.to_thread(wait_for, lambda: seen(bob), 15, "bob's long poll")
            sent = await call(a, "send_message", {"to": bob, "payload": {"via": "cluster"}})
            read = await waiting
            assert [m["id"] for m in read["messages"]] == [sent["id"]]
            assert (await call(b, "ack_messages", {"ids": [sent["id"]]}))["acked"] == 1

    def seen(agent: str) -> bool:
        return any(a.id == agent and a.last_seen for a in bus.agents())

    bus = cluster_env.bus()
    try:
        asyncio.run(scenario())
    finally:
        bus.close()
        stop(server)
