"""Failure injection with Jepsen-style counts (marker `chaos`; `--chaos-long` for 5,000).

Pass: lost = 0 and unexpected = 0 in every case; duplicates bounded by what was in flight;
every dead letter has its reason. Counts go to test-artifacts/chaos-results.jsonl."""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx2
import psutil
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from bus.errors import LimitExceeded
from bus.tokens import TokenFile
from msgbus.services import rabbit_env
from tests.chaos.harness import Checker, in_background
from tests.support.processes import PrivateRedis, free_port, spawn, stop
from tests.support.waiting import wait_for
from tests.support.web import http_status

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

PAYLOAD = "x" * 1024  # 1 KiB messages


def messages(n: int, sender: str, to: str) -> list[dict]:
    """1 KiB messages told apart by a token; every other one brings its own id (the bus
    admits those before publishing), the rest leave it to the bus (admitted beside the
    publish), so a burst exercises both send paths."""
    burst = []
    for i in range(n):
        token = str(uuid.uuid4())
        message = {
            "from": sender,
            "to": to,
            "payload": {"token": token, "pad": PAYLOAD},
            "metadata": {"max_retries": 50},
        }
        burst.append({"id": token, **message} if i % 2 else message)
    return burst


def check(result: dict, in_flight: int) -> None:
    assert result["lost"] == 0, result
    assert result["unexpected"] == 0, result
    assert result["duplicated"] <= in_flight, result


def test_sigkill_a_worker_child_mid_burst(fresh_env, agents, burst):
    worker = fresh_env.start_worker(pool="prefork", concurrency=2)
    bus, reader = fresh_env.bus(), agents("r")
    checker = Checker("SIGKILL a worker child (prefork) mid-burst")
    batch = messages(burst, agents("s"), reader)
    for m in batch[: burst // 2]:
        checker.send(bus, m)
    children = wait_for(
        lambda: psutil.Process(worker.proc.pid).children(), 30, "the prefork pool processes"
    )
    child = children[0]
    child.send_signal(signal.SIGKILL)
    checker.fault_at = time.monotonic()
    for m in batch[burst // 2 :]:
        checker.send(bus, m)
    checker.consume(bus, reader, checker.confirmed, 180)
    check(checker.record(), in_flight=4)


def test_sigkill_the_whole_worker_and_restart_it_later(fresh_env, agents, burst, long_run):
    worker = fresh_env.start_worker()
    bus, reader = fresh_env.bus(), agents("r")
    checker = Checker("SIGKILL the whole worker, restart later")
    batch = messages(burst, agents("s"), reader)
    for i, m in enumerate(batch):
        if i == burst // 3:
            worker.kill(signal.SIGKILL)
            checker.fault_at = time.monotonic()
        checker.send(bus, m)
    time.sleep(max(0.0, (10 if long_run else 2) - (time.monotonic() - checker.fault_at)))
    fresh_env.start_worker()
    checker.healed_at = time.monotonic()
    checker.consume(bus, reader, checker.confirmed, 180)
    check(checker.record(), in_flight=8)


class RabbitNode:
    """A RabbitMQ node of the test's own, on its own ports, so nothing else is disturbed."""

    def __init__(self, base) -> None:
        self.port = free_port()
        self.name = f"chaos{uuid.uuid4().hex[:6]}@localhost"
        self.base = base
        for sub in ("mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (base / "enabled_plugins").write_text("[].\n")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(base)], check=True)
        # Its own free port for Erlang distribution: rabbit_env's AMQP port + 20000 can pass
        # 65535 when the AMQP port is a free one.
        self.env = rabbit_env(self.port, self.name, base) | {"RABBITMQ_DIST_PORT": str(free_port())}
        self.proc = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["rabbitmq-server"],
            env=self.env,
            cwd=self.base,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        subprocess.run(
            ["rabbitmqctl", "-n", self.name, "await_startup"],
            env=self.env,
            capture_output=True,
            timeout=120,
        )
        wait_for(lambda: _answers(self.port), 60, f"RabbitMQ on {self.port}")

    def beam(self) -> psutil.Process:
        """The Erlang VM listening on this node's AMQP port."""
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == self.port and conn.pid:
                return psutil.Process(conn.pid)
        raise LookupError(f"nothing listens on {self.port}")

    def kill9(self) -> None:
        self.beam().send_signal(signal.SIGKILL)
        wait_for(lambda: not _answers(self.port), 30, "the broker to die")
        if self.proc:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.name, "stop"], env=self.env, capture_output=True, timeout=60
        )


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("how", ["kill -9", "clean stop"])
def test_broker_dies_mid_burst_and_comes_back(fresh_env, agents, burst, how):
    # rabbitmq-server drops to the rabbitmq user, which cannot enter pytest's tmp dirs.
    base = Path("/var/lib/rabbitmq") / f"chaos-{uuid.uuid4().hex[:8]}"
    node = RabbitNode(base)
    node.start()
    fresh_env.overrides["MESSAGE_BUS_BROKER_URL"] = node.url
    try:
        fresh_env.start_worker()
        bus, reader = fresh_env.bus(), agents("r")
        checker = Checker(f"RabbitMQ {how} mid-burst, restarted")
        batch = messages(burst, agents("s"), reader)
        for i, m in enumerate(batch):
            if i == burst // 3:
                node.kill9() if how == "kill -9" else node.stop()
                checker.fault_at = time.monotonic()
                restart = in_background(node.start)
            if i == 2 * burst // 3:  # the last third goes out once the broker is back
                restart.join(120)
                checker.healed_at = time.monotonic()
                wait_for(lambda: _answers(node.port), 60, "the restarted broker")
            checker.send(bus, m, retry_for=30 if i >= 2 * burst // 3 else 0)
        checker.consume(bus, reader, checker.confirmed, 240)
        result = checker.record()
        check(result, in_flight=16)
        assert result["send_errors"], "sends during the outage must fail loudly, not vanish"
        assert result["confirmed"] >= burst // 3 * 2 - 50, "the bus must work again after it"
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_redis_kill9_mid_burst_restarted_on_the_same_files(fresh_env, agents, burst, tmp_path):
    redis_ = PrivateRedis(free_port(), tmp_path)
    redis_.start()
    fresh_env.overrides["MESSAGE_BUS_REDIS_URL"] = redis_.url
    fresh_env.start_worker()
    bus, reader = fresh_env.bus(), agents("r")
    checker = Checker("Redis kill -9 mid-burst, restarted on its AOF")
    try:
        for i, m in enumerate(messages(burst, agents("s"), reader)):
            if i == burst // 3:
                redis_.kill9()
                checker.fault_at = time.monotonic()
            if i == burst // 2:
                redis_.start()
                checker.healed_at = time.monotonic()
            checker.send(bus, m)
        checker.consume(bus, reader, checker.confirmed, 240)
        check(checker.record(), in_flight=16)
    finally:
        redis_.stop()


def test_a_thousand_short_ttl_messages_with_no_worker_all_die_expired(fresh_env, agents):
    bus, reader = fresh_env.bus(), agents("r")
    receipts = bus.send_batch(
        [
            {"from": agents("s"), "to": reader, "payload": i, "metadata": {"ttl": 1}}
            for i in range(500)
        ]
    )
    receipts += bus.send_batch(
        [
            {"from": agents("s"), "to": reader, "payload": i, "metadata": {"ttl": 1}}
            for i in range(500)
        ]
    )
    ids = {r.id for r in receipts}
    # The broker expires them by itself: no worker runs until all are dead letters.
    letters = wait_for(
        lambda: (lambda ds: ds if {d.id for d in ds} >= ids else None)(
            bus.dead_letters(limit=2000)
        ),
        60,
        "all 1000 in the dead letters",
        interval=0.2,
    )
    fresh_env.start_worker()
    assert {d.reason for d in letters if d.id in ids} == {"expired"}
    assert bus.read(reader, limit=500) == []
    checker = Checker("1,000 ttl=1s with no worker: all dead, reason expired")
    checker.attempted, checker.confirmed = list(ids), set()  # none may be delivered
    checker.record()


def test_a_full_queue_refuses_the_publish_and_the_sender_is_told(fresh_env, agents):
    fresh_env.overrides["MESSAGE_BUS_QUEUE_MAX_LENGTH"] = "50"
    bus, reader = fresh_env.bus(), agents("r")
    sent, refused = 0, 0
    for i in range(80):
        try:
            bus.send_message({"from": agents("s"), "to": reader, "payload": i})
            sent += 1
        except LimitExceeded as exc:
            refused += 1
            assert "queue is full" in exc.message
    assert (sent, refused) == (50, 30)
    fresh_env.start_worker()
    got = []
    wait_for(
        lambda: got.extend(bus.read(reader, limit=100, wait=0.5)) or len(got) >= 50,
        30,
        "the 50 accepted messages",
    )
    assert len(got) == 50


def test_poison_handlers_end_in_dead_letters_and_the_rest_flows(fresh_env, agents, burst):
    fresh_env.start_worker()
    agent, log = spawn(
        fresh_env,
        "poison-agent",
        ["-m", "msgbus", "agent", "run", "tests.chaos.poison_agent:agent"],
    )
    wait_for(lambda: b"ready." in log.read_bytes(), 60, "the poison agent")
    bus, sender = fresh_env.bus(), agents("s")
    n = burst // 4
    ok = [
        bus.send_message(
            {
                "from": sender,
                "to": "poison",
                "type": "command",
                "payload": {"do": "ok", "i": i},
                "metadata": {"max_retries": 1},
            }
        ).id
        for i in range(n)
    ]
    raises = bus.send_message(
        {
            "from": sender,
            "to": "poison",
            "type": "command",
            "payload": {"do": "raise"},
            "metadata": {"max_retries": 1},
        }
    ).id
    crashes = bus.send_message(
        {
            "from": sender,
            "to": "poison",
            "type": "command",
            "payload": {"do": "exit"},
            "metadata": {"max_retries": 1},
        }
    ).id
    try:
        restarts = 0

        def settled():
            nonlocal agent, restarts
            if agent.poll() is not None:  # os._exit took the process down: restart it
                restarts += 1
                agent, _ = spawn(
                    fresh_env,
                    f"poison-agent-{restarts}",
                    ["-m", "msgbus", "agent", "run", "tests.chaos.poison_agent:agent"],
                )
            reasons = {d.id: d.reason for d in bus.dead_letters()}
            done = sum(bus.status(i).status.value == "acked" for i in ok[-5:])
            return raises in reasons and crashes in reasons and done == 5 and reasons

        reasons = wait_for(
            settled, 240, "both poison messages dead and the rest acked", interval=0.5
        )
        # A raising handler caught in the crash storm of its neighbour may be counted as
        # crashed; either way it ends dead, with its reason.
        assert reasons[raises] in ("handler_failed", "handler_crashed")
        assert reasons[crashes] in ("handler_crashed", "delivery_limit")
        assert all(bus.status(i).status.value == "acked" for i in ok)
        Checker("poison handlers (raise, os._exit) in a burst").record()
    finally:
        stop(agent)


def test_sigkill_the_mcp_http_server_during_concurrent_sends(fresh_env, agents, burst, tmp_path):
    tokens = tmp_path / "tokens.json"
    token = TokenFile(tokens).create("mcp-sender")
    port = free_port()
    argv = ["-m", "msgbus", "mcp", "--http", "--port", str(port), "--tokens-file", str(tokens)]
    fresh_env.start_worker()
    state = {"server": spawn(fresh_env, "mcp-chaos", argv)[0]}
    wait_for(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, 30, "the MCP server")
    reader = agents("r")
    checker = Checker("SIGKILL the MCP HTTP server during concurrent sends (retry, same key)")
    total = burst // 4  # MCP round trips are slower than the Python API
    keys = [f"k-{uuid.uuid4().hex}" for _ in range(total)]
    sent = {"n": 0}

    async def client_loop(share: list[str]) -> None:
        pending = list(share)
        while pending:
            try:
                http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10)
                async with Client(
                    streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)
                ) as client:
                    while pending:
                        key = pending[0]
                        result = await client.call_tool(
                            "send_message", {"to": reader, "payload": key, "dedup_key": key}
                        )
                        if result.is_error:
                            raise RuntimeError(result.content[0].text)
                        checker.confirmed.add(key)
                        pending.pop(0)
                        sent["n"] += 1
            except Exception:  # noqa: BLE001 - the server died: reconnect and retry the key
                await asyncio.sleep(0.2)

    async def chaos() -> None:
        while sent["n"] < total // 3:
            await asyncio.sleep(0.01)
        state["server"].kill()
        checker.fault_at = time.monotonic()
        await asyncio.sleep(1)
        state["server"] = spawn(fresh_env, "mcp-chaos-2", argv)[0]
        checker.healed_at = time.monotonic()

    async def main() -> None:
        shares = [keys[i::4] for i in range(4)]
        await asyncio.gather(chaos(), *(client_loop(s) for s in shares))

    checker.attempted = list(keys)
    try:
        asyncio.run(main())
        bus = fresh_env.bus()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not set(keys) <= set(checker.delivered):
            messages = bus.read(reader, limit=500, wait=0.5)
            checker.delivered.extend(m.payload for m in messages)
            bus.ack(reader, [m.id for m in messages])
        checker.recovered_at = time.monotonic()
        result = checker.record()
        assert result["lost"] == 0 and result["unexpected"] == 0, result
        assert result["duplicated"] == 0, result  # the dedup key made retries safe
    finally:
        stop(state["server"])


# A sender of its own: sends `count` messages to `to` one after another and says on stdout
# which it is about to send ("A token") and which the bus confirmed ("C token").
SENDER = """
import json, sys, uuid
from bus import MessageBus
sender, to, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
bus = MessageBus()
for i in range(count):
    token = str(uuid.uuid4())
    message = {"from": sender, "to": to, "payload": {"token": token, "pad": "x" * 1024}}
    if i % 2:
        message["id"] = token
    print("A", token, flush=True)
    bus.send_message(message)
    print("C", token, flush=True)
"""


def statuses(bus) -> collections.Counter[str]:
    """How many of this bus's messages are in each status."""
    redis, keys = bus.runtime.store.redis, bus.runtime.store.keys
    names = list(redis.scan_iter(match=keys.status("*"), count=1000))
    return collections.Counter(redis.hget(name, "status") for name in names)


def test_senders_sigkilled_mid_burst_lose_nothing_they_admitted(fresh_env, agents, burst):
    """Four sender processes SIGKILLed mid-burst. One killed between its admission and the
    broker's publish leaves a message `queued` in no queue (`queued_before_sweep`: the hole
    without the sweep); beat's `bus.resend_unconfirmed`, called here as beat would once
    the lease has passed, publishes it. Then nothing stays `queued` and every message the
    bus admitted arrives once, the confirmed ones among them."""
    from bus.outbox import resend_unconfirmed

    fresh_env.start_worker()
    bus, reader = fresh_env.bus(), agents("r")
    assert bus.read(reader, limit=1, wait=0) == []
    checker = Checker("SIGKILL 4 sender processes mid-burst, then the sweep")
    senders = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER, agents(f"s{i}"), reader, str(burst // 4)],
            env=fresh_env.env(),
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(4)
    ]
    lines: list[list[str]] = [[] for _ in senders]
    readers = [
        in_background(lambda out=p.stdout, into=lines[i]: into.extend(out))
        for i, p in enumerate(senders)
    ]
    # Each is killed once it has confirmed a quarter of its share.
    for i, proc in enumerate(senders):
        wait_for(
            lambda sent=lines[i]: sum(x[0] == "C" for x in sent) >= burst // 16,
            120,
            f"sender {i} to confirm a quarter of its share",
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    checker.fault_at = time.monotonic()
    for thread in readers:
        thread.join(30)
    # A line the kill cut short (or anything not "A|C <token>") records nothing: "A" is
    # printed before the send, so a cut one stands for no message the bus could have.
    for line in (x.split() for share in lines for x in share):
        if len(line) == 2 and line[0] in ("A", "C"):
            (checker.attempted.append if line[0] == "A" else checker.confirmed.add)(line[1])

    def inbox() -> int:
        return bus.runtime.store.inbox_depths([reader])[reader]

    wait_for(lambda: inbox() >= len(checker.confirmed), 60, "the confirmed sends delivered")
    before = statuses(bus)
    later = bus.runtime.clock.now_ms() + bus.runtime.retention.send_lease_ms + 1000
    swept = resend_unconfirmed(bus.runtime, now_ms=later)
    checker.healed_at = time.monotonic()
    admitted = sum(before.values())  # every message the bus admitted has a status
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(set(checker.delivered)) < admitted:
        messages = bus.read(reader, limit=500, wait=0.5)
        checker.delivered.extend(m.payload["token"] for m in messages)
        bus.ack(reader, [m.id for m in messages])
    checker.recovered_at = time.monotonic()
    after = statuses(bus)
    checker.notes |= {
        "admitted": admitted,
        "queued_before_sweep": before["queued"],
        "swept": swept["resent"],
        "queued_after_sweep": after["queued"],
    }
    result = checker.record()
    check(result, in_flight=0)
    assert result["delivered"] == admitted, result
    assert after["queued"] == 0, result
