"""The worker's pinned-connection script path behaves like redis-py's own: it survives a
dropped connection and a flushed script cache, and reports an outage as one."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from bus.errors import BusUnavailable
from bus.redis_conn import PinnedScript, connect, execute_scripted, queue_script, redis_errors
from tests.conftest import REDIS_URL

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
    script = PinnedScript(client, INCR)
    assert script([key], [2]) == 2
    assert script([key], [3]) == 5
    assert client.get(key) == "5"


def test_a_killed_connection_is_replaced_without_an_error(client, key):
    script = PinnedScript(client, INCR)
    script([key], [1])
    host, port = script._connection()._sock.getsockname()
    assert client.client_kill_filter(addr=f"{host}:{port}") == 1
    assert script([key], [1]) == 2


def test_a_flushed_script_cache_is_reloaded(client, key):
    script = PinnedScript(client, INCR)
    script([key], [1])
    client.script_flush()
    assert script([key], [1]) == 2


def test_a_script_error_is_raised_and_the_connection_stays_usable(client, key):
    client.set(key, "not a number")
    script = PinnedScript(client, INCR)
    with pytest.raises(redis.ResponseError, match="not an integer"):
        script([key], [1])
    client.delete(key)
    assert script([key], [1]) == 1


def test_each_thread_holds_its_own_connection(client, key):
    script = PinnedScript(client, INCR)
    seen: list[int] = []

    def run() -> None:
        for _ in range(50):
            script([key], [1])
        seen.append(id(script._connection()))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.get(key) == "200"
    assert len(set(seen)) == 4


def test_an_unreachable_redis_is_reported_as_bus_unavailable():
    from bus.breaker import BREAKERS

    dead = connect("redis://127.0.0.1:1/0")
    script = PinnedScript(dead, INCR)
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
