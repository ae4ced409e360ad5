"""Redis faults in the middle of a burst, with Jepsen-style counts (marker `chaos`):

- a worker agent answering a burst of requests while Redis is killed -9 and restarted on
  its AOF: every request is answered exactly once (by correlation id);
- Redis turning read-only (the instance the bus uses becomes a replica, as in a failover:
  `REPLICAOF` a master that does not answer), then master again: nothing lost, duplicates
  bounded, nothing dead-lettered for a permanent reason.

`--chaos-long` makes the bursts larger and the outages longer."""

from __future__ import annotations

import collections
import subprocess
import time
import uuid

import pytest

from bus.errors import BusError, BusUnavailable, is_transient_reason
from tests.chaos.harness import CLIENT_RETRY_PAUSE, Checker
from tests.chaos.test_chaos import check, messages
from tests.support.counting_agent import runs_key
from tests.support.inbox import full_inbox_of
from tests.support.processes import PrivateRedis, free_port, spawn, stop
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


def outage_seconds(long_run: bool) -> float:
    return 8.0 if long_run else 3.0


class Outage:
    """Starts a fault at a given send and heals it once `seconds` have passed (checked at
    each send, and at the end of the burst at the latest)."""

    def __init__(self, checker: Checker, seconds: float, fault, heal) -> None:
        self.checker, self.seconds, self.fault, self.heal = checker, seconds, fault, heal

    def tick(self, i: int, start_at: int) -> None:
        c = self.checker
        if i == start_at and c.fault_at is None:
            self.fault()
            c.fault_at = time.monotonic()
        elif c.fault_at is not None and c.healed_at is None:
            if time.monotonic() - c.fault_at >= self.seconds:
                self.end()

    def end(self) -> None:
        c = self.checker
        if c.fault_at is not None and c.healed_at is None:
            time.sleep(max(0.0, self.seconds - (time.monotonic() - c.fault_at)))
            self.heal()
            c.healed_at = time.monotonic()


def requests(n: int, requester: str) -> list[dict]:
    """Requests to the echo agent told apart by a token; every other one brings its own id."""
    burst = []
    for i in range(n):
        token = str(uuid.uuid4())
        message = {
            "from": requester,
            "to": "echo",
            "type": "request",
            "reply_to": requester,
            "payload": {"token": token},
            "metadata": {"max_retries": 50},
        }
        burst.append({"id": token, **message} if i % 2 else message)
    return burst


def test_a_worker_agent_answers_every_request_once_across_a_redis_kill9(
    fresh_env, agents, burst, long_run, tmp_path
):
    redis_ = PrivateRedis(free_port(), tmp_path)
    redis_.start()
    fresh_env.overrides["MESSAGE_BUS_REDIS_URL"] = redis_.url
    fresh_env.start_worker()
    argv = ["-m", "msgbus", "agent", "run", "examples.echo_agent:agent"]
    agent, log = spawn(fresh_env, "echo-chaos", argv)
    try:
        wait_for(lambda: b"ready." in log.read_bytes(), 60, "the echo agent")
        bus, requester = fresh_env.bus(), agents("q")
        checker = Checker("worker agent answering requests, Redis kill -9 mid-burst, restarted")
        outage = Outage(checker, outage_seconds(long_run), redis_.kill9, redis_.start)
        n = burst // 4  # each request is two deliveries and a handler run
        for i, request in enumerate(requests(n, requester)):
            outage.tick(i, n // 3)
            checker.send(bus, request)
        outage.end()

        answers: collections.Counter[str] = collections.Counter()
        wrong_correlation = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not checker.confirmed <= set(answers):
            try:
                replies = bus.read(requester, limit=500, wait=0.5)
                bus.ack(requester, [m.id for m in replies])
            except BusError:
                time.sleep(CLIENT_RETRY_PAUSE)
                continue
            for reply in replies:
                token = reply.payload["echo"]["token"]
                answers[token] += 1
                if reply.correlation_id != checker.ids.get(token, reply.correlation_id):
                    wrong_correlation.append((token, reply.correlation_id))
        checker.recovered_at = time.monotonic()
        checker.delivered = list(answers.elements())
        result = checker.record()
        assert result["lost"] == 0 and result["unexpected"] == 0, result
        assert result["duplicated"] == 0, result  # each request answered exactly once
        assert wrong_correlation == []
        assert agent.poll() is None, log.read_text()[-2000:]
    finally:
        stop(agent)
        redis_.stop()


def redis_cli(port: int, *args: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
    )
    assert out.returncode == 0 and not out.stdout.startswith("ERR"), (args, out)
    return out.stdout.strip()


def test_redis_turning_readonly_mid_burst_loses_nothing(
    fresh_env, agents, burst, long_run, tmp_path
):
    redis_ = PrivateRedis(free_port(), tmp_path)
    redis_.start()
    fresh_env.overrides["MESSAGE_BUS_REDIS_URL"] = redis_.url
    fresh_env.start_worker()
    nowhere = free_port()  # a master that never answers: the replica keeps its data

    def become_replica() -> None:
        redis_cli(redis_.port, "REPLICAOF", "127.0.0.1", str(nowhere))
        assert "READONLY" in redis_cli(redis_.port, "SET", "probe", "1")
        # The bus sees it, as a transient refusal (a read leases: it writes).
        with pytest.raises(BusUnavailable, match="READONLY"):
            bus.read(reader, limit=1)

    def become_master() -> None:
        redis_cli(redis_.port, "REPLICAOF", "NO", "ONE")

    bus, reader = fresh_env.bus(), agents("r")
    checker = Checker(
        "Redis turns READONLY mid-burst (REPLICAOF an unreachable master), then NO ONE"
    )
    outage = Outage(checker, outage_seconds(long_run), become_replica, become_master)
    try:
        for i, m in enumerate(messages(burst, agents("s"), reader)):
            outage.tick(i, burst // 3)
            checker.send(bus, m)
        outage.end()
        checker.consume(bus, reader, checker.confirmed, 240)
        result = checker.record()
        check(result, in_flight=16)
        letters = bus.dead_letters(limit=burst)
        permanent = [(d.id, d.reason) for d in letters if not is_transient_reason(d.reason)]
        assert permanent == [], permanent[:10]
        assert letters == [], [(d.id, d.reason, d.error) for d in letters[:10]]
    finally:
        redis_.stop()


def test_a_kept_answer_survives_a_redis_outage_between_its_retries(fresh_env, agents, tmp_path):
    """A worker agent's answer refused for now (the requester's inbox is full) is kept by
    the handle task's retries; Redis going away between two of them must not drop it (it
    once did: the handler then ran again, a side effect repeated). The requester gets the
    one answer once there is room, and the handler ran once."""
    redis_ = PrivateRedis(free_port(), tmp_path)
    redis_.start()
    fresh_env.overrides.update(
        {
            "MESSAGE_BUS_REDIS_URL": redis_.url,
            "MESSAGE_BUS_INBOX_MAX": "4",
            "MESSAGE_BUS_RETRY_BACKOFF": "0.3",
            "MESSAGE_BUS_RETRY_BACKOFF_MAX": "1.0",
        }
    )
    fresh_env.start_worker()
    argv = ["-m", "msgbus", "agent", "run", "tests.support.counting_agent:agent"]
    agent, log = spawn(fresh_env, "counter-outage", argv)
    bus = None
    try:
        wait_for(lambda: b"ready." in log.read_bytes(), 60, "the counting agent")
        bus = fresh_env.bus()
        asker = full_inbox_of(bus, agents)
        asked = asker.start_request({"to": "counter", "metadata": {"max_retries": 40}})
        wait_for(lambda: asker.status(asked).reason == "reply_refused", 30, "the answer refused")

        redis_.stop()
        outage_retry = f"could not record status retrying for {asked}".encode()
        wait_for(lambda: outage_retry in log.read_bytes(), 30, "a retry during the outage")
        redis_.start()

        def room() -> bool:
            try:
                asker.ack([m.id for m in asker.read(limit=10)])
                return True
            except BusUnavailable:  # the bus's clients are reconnecting
                return False

        wait_for(room, 30, "room in the inbox")
        answer = wait_for(lambda: asker.response_to(asked), 60, "the answer")
        assert answer.payload == {"runs": 1}
        runs = bus.runtime.redis.get(runs_key(bus.settings.key_prefix, asked))
        assert int(runs) == 1  # the kept answer came through the outage
        assert agent.poll() is None, log.read_text()[-2000:]
    finally:
        if bus is not None:
            bus.close()
        stop(agent)
        redis_.stop()
