"""Every Lua call goes through bus.scripts.ScriptRunner; each of its backends behaves alike
and as redis-py's own commands do: it survives a dropped connection and a flushed script
cache, gives its connections back, never reads a reply meant for an earlier call, and
reports an outage (or a demoted primary) as transient.

What a user (or an operator) can see is asserted: replies, the keys the scripts wrote, the
runner's connections as Redis lists them (each test's runner has a client name of its own).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from bus.breaker import BREAKERS
from bus.errors import BusUnavailable
from bus.redis_conn import connect
from bus.scripts import Script, ScriptRunner
from tests.support.paths import REDIS_URL
from tests.support.processes import PrivateRedis, free_port

pytestmark = pytest.mark.timeout(60)

INCR = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
ONE_MORE = Script("return redis.call('INCR', KEYS[1]) * 100")


@pytest.fixture
def name():
    return f"test-runner-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def runner(services, script_backend, name):
    client = connect(f"{REDIS_URL}?client_name={name}")
    yield ScriptRunner(client, backend=script_backend(client))
    client.close()


def connections(redis_client, name: str) -> list[dict]:
    return [c for c in redis_client.client_list() if c.get("name") == name]


def test_a_script_runs_and_returns_decoded_replies(runner, redis_client, redis_key):
    assert runner.call(INCR, [redis_key], [2], action="add") == 2
    assert runner.call(INCR, [redis_key], [3], action="add") == 5
    assert redis_client.get(redis_key) == "5"


def test_a_killed_connection_is_replaced_without_an_error(runner, redis_client, name, redis_key):
    runner.call(INCR, [redis_key], [1], action="add")
    [conn] = connections(redis_client, name)
    assert redis_client.client_kill_filter(_id=conn["id"]) == 1
    assert runner.call(INCR, [redis_key], [1], action="add") == 2
    assert [c["id"] for c in connections(redis_client, name)] != [conn["id"]]  # a new one


def test_a_flushed_script_cache_is_reloaded(runner, redis_client, redis_key):
    runner.call(INCR, [redis_key], [1], action="add")
    redis_client.script_flush()
    assert runner.call(INCR, [redis_key], [1], action="add") == 2


def test_calls_of_several_scripts_after_a_flush_each_run_once(runner, redis_client, redis_key):
    redis_client.script_flush()
    calls = [
        (INCR, [redis_key], [2]),
        (ONE_MORE, [redis_key + ":other"], []),
        (INCR, [redis_key], [3]),
    ]
    assert runner.many(calls, action="add") == [2, 100, 5]
    assert redis_client.get(redis_key + ":other") == "1"  # not run again by the reload


def test_a_script_error_is_raised_and_the_next_call_gets_its_own_reply(
    runner, redis_client, redis_key
):
    redis_client.set(redis_key, "not a number")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        runner.call(INCR, [redis_key], [1], action="add")
    redis_client.delete(redis_key)
    assert runner.call(INCR, [redis_key], [7], action="add") == 7


def test_a_refused_call_in_a_batch_does_not_stop_the_others(runner, redis_client, redis_key):
    redis_client.set(redis_key + ":bad", "not a number")
    redis_client.script_flush()  # and the script has to be loaded again on the way
    calls = [(INCR, [redis_key], [1]), (INCR, [redis_key + ":bad"], [1]), (INCR, [redis_key], [2])]
    with pytest.raises(redis.ResponseError, match="not an integer"):
        runner.many(calls, action="add")
    assert redis_client.get(redis_key) == "3"  # both others ran
    assert runner.call(INCR, [redis_key], [1], action="add") == 4


def test_concurrent_callers_use_separate_connections_and_give_them_back(
    runner, redis_client, name, redis_key
):
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        for _ in range(50):
            runner.call(INCR, [redis_key], [1], action="add")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert redis_client.get(redis_key) == "200"
    assert 1 <= len(connections(redis_client, name)) <= 4  # never more than callers at once


def test_a_caller_per_call_does_not_leak_connections(runner, redis_client, name, redis_key):
    """Celery's gevent pool runs each task in a new greenlet: connections must come back."""
    for _ in range(200):
        caller = threading.Thread(
            target=runner.call, args=(INCR, [redis_key], [1]), kwargs={"action": "add"}
        )
        caller.start()
        caller.join()
    assert redis_client.get(redis_key) == "200"
    assert len(connections(redis_client, name)) == 1


def test_an_unreachable_redis_is_reported_as_bus_unavailable(script_backend):
    dead = connect("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(BusUnavailable, match="Redis cannot be reached while trying to deliver"):
            ScriptRunner(dead, backend=script_backend(dead)).call(
                INCR, ["k"], [1], action="deliver a message"
            )
    finally:
        BREAKERS["redis"].success()  # one failure counted; later tests start closed


def test_a_reply_slower_than_the_socket_timeout_is_transient_and_never_read_later(
    services, script_backend, redis_client, redis_key
):
    """The runner keeps redis-py's socket timeout (in the kernel, on the socket script_backend);
    a socket whose reply is still on its way is dropped, so the next call reads its own."""
    slow = connect(REDIS_URL, socket_timeout=0.2)
    runner = ScriptRunner(slow, backend=script_backend(slow))
    busy = Script(
        "local t = redis.call('TIME') repeat local n = redis.call('TIME') until "
        "(n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 600000 return 1"
    )
    started = time.monotonic()
    try:
        with pytest.raises(BusUnavailable, match="cannot be reached"):
            runner.call(busy, [redis_key], [], action="wait")
        assert time.monotonic() - started < 0.6 * 2 + 0.5  # the timeout, not a hang
        assert redis_client.ping()  # answered once the busy scripts end (within its 5 s timeout)
        assert runner.call(INCR, [redis_key], [4], action="add") == 4  # not the busy script's 1
    finally:
        BREAKERS["redis"].success()
        slow.close()


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_demoted_primary_is_transient_and_a_promoted_one_is_used_again(
    script_backend, private_redis
):
    """READONLY (the server became a replica, as after a failover) is reported as an outage
    to retry, not as the script's error; once it is a primary again, calls go through."""
    client = connect(private_redis.url)
    runner = ScriptRunner(client, backend=script_backend(client))
    admin = connect(private_redis.url)
    try:
        assert runner.call(INCR, ["k"], [1], action="add") == 1  # the positive control
        admin.replicaof("127.0.0.1", free_port())  # a master that does not answer
        with pytest.raises(BusUnavailable, match="deliver a message"):
            runner.call(INCR, ["k"], [1], action="deliver a message")
        admin.replicaof("NO", "ONE")
        assert runner.call(INCR, ["k"], [1], action="add") == 2
    finally:
        BREAKERS["redis"].success()
        client.close()
        admin.close()


def test_no_call_sends_nothing(runner):
    assert runner.many([], action="add") == []
