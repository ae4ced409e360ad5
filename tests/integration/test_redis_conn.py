"""The worker's direct script path behaves like redis-py's own: it survives a dropped
connection and a flushed script cache, and reports an outage as one."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from bus.errors import BusUnavailable
from bus.redis_conn import DirectScript, connect, execute_scripted, queue_script, redis_errors
from tests.support.paths import REDIS_URL

pytestmark = pytest.mark.timeout(60)

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
def client(services):
    client = connect(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def key(client):
    name = f"test:pinned:{uuid.uuid4().hex}"
    yield name
    client.delete(name)


def test_a_pinned_script_runs_and_returns_decoded_replies(client, key):
    script = DirectScript(client, INCR)
    assert script([key], [2]) == 2
    assert script([key], [3]) == 5
    assert client.get(key) == "5"


def test_a_killed_connection_is_replaced_without_an_error(client, key):
    script = DirectScript(client, INCR)
    script([key], [1])
    [conn] = script._free
    host, port = conn._sock.getsockname()
    assert client.client_kill_filter(addr=f"{host}:{port}") == 1
    assert script([key], [1]) == 2


def test_a_flushed_script_cache_is_reloaded(client, key):
    script = DirectScript(client, INCR)
    script([key], [1])
    client.script_flush()
    assert script([key], [1]) == 2


def test_a_script_error_is_raised_and_the_connection_stays_usable(client, key):
    client.set(key, "not a number")
    script = DirectScript(client, INCR)
    with pytest.raises(redis.ResponseError, match="not an integer"):
        script([key], [1])
    client.delete(key)
    assert script([key], [1]) == 1


def test_concurrent_callers_use_separate_connections_and_give_them_back(client, key):
    script = DirectScript(client, INCR)
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        for _ in range(50):
            script([key], [1])

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.get(key) == "200"
    assert 1 <= len(script._free) <= 4  # never more connections than callers at once
    assert len({id(c) for c in script._free}) == len(script._free)


def test_a_greenlet_per_call_does_not_leak_connections(client, key):
    """Celery's gevent pool runs each task in a new greenlet: connections must come back."""
    script = DirectScript(client, INCR)
    for _ in range(200):
        thread = threading.Thread(target=script, args=([key], [1]))  # a caller that ends
        thread.start()
        thread.join()
    assert client.get(key) == "200"
    assert len(script._free) == 1


def test_an_unreachable_redis_is_reported_as_bus_unavailable():
    from bus.breaker import BREAKERS

    dead = connect("redis://127.0.0.1:1/0")
    script = DirectScript(dead, INCR)
    try:
        with pytest.raises(BusUnavailable, match="Redis cannot be reached"):
            with redis_errors("deliver a message"):
                script(["k"], [1])
    finally:
        BREAKERS["redis"].success()  # one failure counted; later tests start closed


def test_pipelined_script_calls_survive_a_flushed_script_cache_and_run_once(client, key):
    script = client.register_script(INCR)
    client.script_flush()
    pipe = client.pipeline(transaction=False)
    queue_script(pipe, script, [key], [2])
    pipe.incr(key + ":plain")  # a plain command in the same pipeline runs exactly once
    queue_script(pipe, script, [key], [3])
    assert execute_scripted(pipe, script) == [2, 1, 5]
    assert client.get(key + ":plain") == "1"
    client.delete(key + ":plain")


def test_a_pipelined_script_error_is_raised(client, key):
    client.set(key, "not a number")
    script = client.register_script(INCR)
    pipe = client.pipeline(transaction=False)
    queue_script(pipe, script, [key], [1])
    with pytest.raises(redis.ResponseError, match="not an integer"):
        execute_scripted(pipe, script)


def test_many_calls_share_one_round_trip_and_a_refused_one_does_not_stop_the_rest(client, key):
    client.set(key + ":bad", "not a number")
    script = DirectScript(client, INCR)
    client.script_flush()  # and the script has to be loaded again on the way
    replies = script.many([([key], [1]), ([key + ":bad"], [1]), ([key], [2])])
    assert replies[0] == 1 and replies[2] == 3
    assert isinstance(replies[1], redis.ResponseError)
    client.delete(key + ":bad")


def test_a_reply_slower_than_the_socket_timeout_is_a_timeout_and_the_socket_is_dropped(client, key):
    """The direct path keeps redis-py's socket timeout (in the kernel, on a plain socket)."""
    slow = connect(REDIS_URL, socket_timeout=0.2)
    busy = "local t = redis.call('TIME') repeat local n = redis.call('TIME') until " + (
        "(n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 600000 return 1"
    )
    script = DirectScript(slow, busy)
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        script([key], [])
    assert time.monotonic() - started < 0.6 + 0.2 * 2 + 0.5  # the timeout, not a hang
    [conn] = script._free
    assert conn._sock is None  # never reused with a reply still on its way
    assert client.ping()  # answered once the busy script ends (within its 5 s timeout)
    assert DirectScript(slow, INCR)([key], [4]) == 4
    slow.close()
