"""Send -> worker -> inbox -> read -> ack, on real RabbitMQ, Redis and a celery worker."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from bus import scripts
from bus.breaker import BREAKERS
from bus.client import MessageBus, RequestTimeout
from bus.errors import BusUnavailable, InboxFull, NotFound
from bus.scripts import ScriptRunner
from bus.scripts.runner import BACKEND
from bus.topology import agent_queue
from tests.support.env import queue_depth
from tests.support.inbox import broadcast_among
from tests.support.processes import PrivateRedis, free_port
from tests.support.waiting import holds_for, wait_for

pytestmark = pytest.mark.timeout(120)


def read_until(bus, agent, count, timeout=15.0):
    got = []

    def more():
        got.extend(bus.read(agent, limit=100, wait=0.5))
        return len(got) >= count

    wait_for(more, timeout, f"{count} messages for {agent}")
    return got


def test_seed_usage_sends_a_high_priority_command_and_it_is_read_and_acked(bus, agents):
    agent1, agent2 = agents("agent1"), agents("agent2")
    receipt = bus.send_message(
        {
            "from": agent1,
            "to": agent2,
            "type": "command",
            "payload": {"action": "process_task", "taskId": "123"},
            "metadata": {"priority": "high", "ttl": 3600, "topic": "task-processing"},
        }
    )
    assert receipt.status.value == "queued"
    assert receipt.queue == "bus.high"
    assert len(receipt.id) == 36

    bus.subscribe(
        agent2, ["task-processing"], types=["command", "query"], priorities=["high", "critical"]
    )
    messages = bus.read(agent2, limit=10, wait=5.0)
    assert [m.id for m in messages] == [receipt.id]
    m = messages[0]
    assert m.sender == agent1 and m.to == agent2
    assert m.payload == {"action": "process_task", "taskId": "123"}
    assert m.metadata.priority.value == "high" and m.metadata.ttl == 3600
    assert m.verified and m.signature is not None and m.trace_id
    assert bus.status(receipt.id).status.value == "read"

    result = bus.ack(agent2, [m.id for m in messages])
    assert result.acked == [receipt.id]
    assert bus.status(receipt.id).status.value == "acked"
    assert bus.read(agent2, limit=10) == []
    assert [h.id for h in bus.history(agent2)] == [receipt.id]
    assert [h.id for h in bus.history(agent1)] == [receipt.id]


def test_topic_message_reaches_only_subscribers_whose_filters_match(bus, agents):
    sender, hi, cmd, other = agents("pub"), agents("hi"), agents("cmd"), agents("other")
    topic = agents("jobs")
    bus.subscribe(hi, [topic], priorities=["high", "critical"])
    bus.subscribe(cmd, [topic], types=["command"])
    bus.subscribe(other, [agents("unrelated")])

    low_event = bus.publish(sender, topic, {"n": 1}, type="event", metadata={"priority": "low"})
    high_event = bus.publish(sender, topic, {"n": 2}, type="event", metadata={"priority": "high"})
    low_command = bus.publish(sender, topic, {"n": 3}, type="command", metadata={"priority": "low"})
    wait_for(lambda: bus.status(low_command.id).status.value == "delivered", 10, "delivery")
    wait_for(lambda: bus.status(low_event.id).status.value == "delivered", 10, "delivery")

    assert [m.id for m in read_until(bus, hi, 1)] == [high_event.id]
    assert sorted(m.id for m in read_until(bus, cmd, 1)) == [low_command.id]
    assert bus.read(other, limit=10) == []
    assert bus.status(low_event.id).recipients == 0


def test_broadcast_reaches_every_registered_agent_but_the_sender(fresh_env, agents):
    fresh_env.start_worker()
    bus = fresh_env.bus()
    receipt, (a, b, c) = broadcast_among(bus, agents)
    assert [m.id for m in read_until(bus, b, 1)] == [receipt.id]
    assert [m.id for m in read_until(bus, c, 1)] == [receipt.id]
    assert receipt.id not in [m.id for m in bus.read(a, limit=10)]
    assert bus.status(receipt.id).recipients == 2
    assert {h.id for h in bus.history(b)} == {receipt.id}


def test_read_returns_higher_priority_first_then_fifo(bus, agents):
    sender, reader = agents("s"), agents("r")
    order = ["low", "normal", "critical", "high", "low", "critical", "normal", "high"]
    receipts = [
        bus.send_message({"from": sender, "to": reader, "payload": i, "metadata": {"priority": p}})
        for i, p in enumerate(order)
    ]
    wait_for(
        lambda: all(bus.status(r.id).status.value == "delivered" for r in receipts),
        15,
        "all delivered",
    )
    got = bus.read(reader, limit=100)
    rank = {"critical": 0, "high": 1, "normal": 2, "low": 3}
    expected = sorted(range(len(order)), key=lambda i: (rank[order[i]], i))
    assert [m.payload for m in got] == expected


def test_a_critical_message_does_not_wait_behind_a_low_backlog(fresh_env, agents):
    bus = fresh_env.bus()
    sender, reader, sink = agents("s"), agents("r"), agents("sink")
    for i in range(2000):
        bus.send_message(
            {"from": sender, "to": sink, "payload": i, "metadata": {"priority": "low"}}
        )
    # One thread drains the backlog, so that how far it got when the critical message
    # lands measures the order, not how busy the machine is.
    fresh_env.start_worker(concurrency=1)
    fresh_env.start_worker(
        concurrency=2, queues="bus.critical,bus.high", MESSAGE_BUS_EXPRESS_WORKER="1"
    )
    wait_for(lambda: bus.runtime.store.inbox_depth(sink)[0] > 100, 30, "the backlog draining")
    receipt = bus.send_message(
        {"from": sender, "to": reader, "payload": "urgent", "metadata": {"priority": "critical"}}
    )
    wait_for(lambda: bus.runtime.store.inbox_depth(reader)[0] == 1, 30, "the critical message")
    still_waiting = 2000 - bus.runtime.store.inbox_depth(sink)[0]
    assert still_waiting > 500, "the critical message must not wait for the backlog to drain"
    assert bus.read(reader, limit=1)[0].id == receipt.id


def test_unacked_message_comes_back_after_its_lease_expires(module_env, worker, agents):
    bus = module_env.bus(visibility_timeout=0.5)
    sender, reader = agents("s"), agents("r")
    receipt = bus.send_message({"from": sender, "to": reader, "payload": "x"})
    first = read_until(bus, reader, 1)
    assert first[0].delivery_count == 1
    assert bus.read(reader, limit=10) == []  # leased: not readable now
    again = wait_for(lambda: bus.read(reader, limit=10), 5, "lease to expire")
    assert [m.id for m in again] == [receipt.id]
    assert again[0].delivery_count == 2
    assert bus.ack(reader, [receipt.id]).acked == [receipt.id]
    holds_for(lambda: bus.read(reader, limit=10) == [], 0.6, "an acked message staying gone")


def test_long_poll_wakes_when_a_message_arrives(bus, agents):
    sender, reader = agents("s"), agents("r")
    result: dict[str, object] = {}

    def wait_read():
        started = time.monotonic()
        result["messages"] = bus.read(reader, limit=1, wait=20)
        result["waited"] = time.monotonic() - started

    thread = threading.Thread(target=wait_read)
    thread.start()
    wait_for(
        lambda: bus.runtime.redis.pubsub_numsub(bus.runtime.keys.inbox_channel(reader))[0][1],
        5,
        "the reader to be waiting",
    )
    receipt = bus.send_message({"from": sender, "to": reader, "payload": 1})
    thread.join(25)
    assert [m.id for m in result["messages"]] == [receipt.id]
    assert result["waited"] < 10


def test_a_repeated_dedup_key_is_refused_as_duplicate_and_delivered_once(bus, agents):
    sender, reader = agents("s"), agents("r")
    first = bus.send_message(
        {"from": sender, "to": reader, "payload": 1, "metadata": {"dedup_key": "order-42"}}
    )
    again = bus.send_message(
        {"from": sender, "to": reader, "payload": 2, "metadata": {"dedup_key": "order-42"}}
    )
    assert first.status.value == "queued"
    assert again.status.value == "duplicate" and again.duplicate_of == first.id
    same_id = bus.send_message({"id": first.id, "from": sender, "to": reader, "payload": 3})
    assert same_id.status.value == "duplicate"
    got = read_until(bus, reader, 1)
    holds_for(lambda: bus.read(reader, limit=10) == [], 0.5, "no second copy")
    assert [m.payload for m in got] == [1]


def test_send_batch_delivers_every_message_of_mixed_priorities(bus, agents):
    sender, reader = agents("s"), agents("r")
    batch = [
        {
            "from": sender,
            "to": reader,
            "payload": i,
            "metadata": {"priority": "high" if i % 2 else "low"},
        }
        for i in range(50)
    ]
    receipts = bus.send_batch(batch)
    assert len(receipts) == 50 and all(r.status.value == "queued" for r in receipts)
    wait_for(
        lambda: all(bus.status(r.id).status.value == "delivered" for r in receipts),
        15,
        "the whole batch delivered",
    )
    got = bus.read(reader, limit=100)
    assert sorted(m.payload for m in got) == list(range(50))
    assert [m.metadata.priority.value for m in got[:25]] == ["high"] * 25


def test_health_and_stats_from_the_python_api(bus, agents):
    health = bus.health()
    assert health.ready and health.redis == "ok" and health.workers
    assert health.breakers == {"redis": "closed", "broker": "closed"}
    bus.subscribe(agents("a"), [agents("t")])
    stats = bus.stats()
    assert stats.subscriptions >= 1 and set(stats.queue_depths) == {
        "bus.critical",
        "bus.high",
        "bus.normal",
        "bus.low",
    }


def test_request_returns_the_correlated_response(bus, agents):
    asker, answerer = agents("asker"), agents("answerer")

    def answer():
        [req] = read_until(bus, answerer, 1)
        bus.send_message(
            {
                "from": answerer,
                "to": req.reply_to,
                "type": "response",
                "correlation_id": req.id,
                "payload": {"echo": req.payload},
            }
        )
        bus.ack(answerer, [req.id])

    thread = threading.Thread(target=answer)
    thread.start()
    response = bus.request({"from": asker, "to": answerer, "payload": "ping"}, timeout=15)
    thread.join(10)
    assert response.payload == {"echo": "ping"}
    assert response.type.value == "response"
    assert bus.read(asker, limit=10) == []  # the response was taken out of the inbox


def test_a_late_answer_to_an_earlier_request_does_not_answer_the_next_one(bus, agents):
    # The second request waits on the pub/sub connection the first one used.
    asker, answerer = agents("asker"), agents("answerer")

    def answer(req, note):
        return bus.send_message(
            {
                "from": answerer,
                "to": req.reply_to,
                "type": "response",
                "correlation_id": req.id,
                "payload": note,
            }
        )
        bus.ack(answerer, [req.id])

    def answer_both():
        [first] = read_until(bus, answerer, 1)
        answer(first, "first")
        [second] = read_until(bus, answerer, 1)
        late = answer(first, "late, to the first")  # lands while the second request waits
        wait_for(lambda: bus.status(late.id).status.value == "delivered", 10, "the late answer")
        answer(second, "second")

    thread = threading.Thread(target=answer_both)
    thread.start()
    one = bus.request({"from": asker, "to": answerer, "payload": 1}, timeout=15)
    two = bus.request({"from": asker, "to": answerer, "payload": 2}, timeout=15)
    thread.join(10)
    assert (one.payload, two.payload) == ("first", "second")
    assert two.correlation_id != one.correlation_id
    [late] = read_until(bus, asker, 1)  # the late answer waits in the inbox as mail
    assert (late.payload, late.correlation_id) == ("late, to the first", one.correlation_id)
    assert bus.status(two.id).status.value == "acked"


def test_a_request_nobody_answers_times_out_with_its_id_and_stays_in_the_inbox(bus, agents):
    asker, silent = agents("asker"), agents("silent")
    with pytest.raises(RequestTimeout) as timed_out:
        bus.request({"from": asker, "to": silent, "payload": "anyone?"}, timeout=1)

    assert "no response to request" in timed_out.value.message
    [waiting] = read_until(bus, silent, 1)  # the request was sent all the same
    assert waiting.id == timed_out.value.fields["id"] and waiting.payload == "anyone?"


def test_a_bus_that_delivers_here_has_a_direct_message_in_the_inbox_when_send_returns(
    module_env, agents
):
    # What a worker agent's answers go through (inside its handle task): the send itself
    # delivers, no bus.deliver task waits for a worker.
    sender, reader = agents("sender"), agents("reader")
    with module_env.bus() as plain:
        plain.read(reader)  # the reader connects: mail for it is expected
    here = MessageBus(module_env.settings(), deliver_here=True)
    try:
        receipt = here.send_message({"from": sender, "to": reader, "payload": {"n": 1}})
        assert here.status(receipt.id).status.value == "delivered"
        [message] = here.read(reader)
        assert message.payload == {"n": 1} and message.verified
    finally:
        here.close()


def test_a_send_delivered_here_is_delivered_only_when_its_admission_went_through(
    module_env, agents, redis_client
):
    """The delivery rides behind the admission in one round trip: what the admission
    refuses or finds a duplicate never reaches the inbox (no worker runs here, so the
    inbox shows exactly what the sends themselves delivered)."""
    sender, reader = agents("sender"), agents("reader")
    with module_env.bus() as plain:
        plain.read(reader)  # the reader connects: mail for it is expected
    here = MessageBus(module_env.settings(inbox_max=2, sender_share=1.0), deliver_here=True)
    try:
        key = {"dedup_key": "job-1"}
        first = here.send_message({"from": sender, "to": reader, "payload": 1, "metadata": key})
        again = here.send_message({"from": sender, "to": reader, "payload": 2, "metadata": key})
        assert (first.status.value, again.status.value) == ("queued", "duplicate")
        assert again.duplicate_of == first.id
        assert here.status(first.id).status.value == "delivered"  # the control
        with pytest.raises(NotFound):  # the duplicate's own id was never admitted
            here.status(again.id)
        here.send_message({"from": sender, "to": reader, "payload": 3})
        with pytest.raises(InboxFull):
            here.send_message({"from": sender, "to": reader, "payload": 4})
        payloads = [m.payload for m in here.read(reader, limit=10)]
        assert payloads == [1, 3]
    finally:
        here.close()


def test_a_busy_redis_sends_a_delivered_here_message_degraded_not_with_a_raw_error(
    module_env, agents, tmp_path
):
    """Redis busy with a long script answers BUSY: a transient refusal. A send that
    delivers itself (its delivery riding behind its admission) goes degraded to the
    broker like any other send, instead of raising Redis's raw error (control: a plain
    bus's send on the same Redis)."""
    redis_ = PrivateRedis(free_port(), tmp_path)
    redis_.start()
    client = redis.Redis.from_url(redis_.url)
    try:
        client.config_set("busy-reply-threshold", 50)
        sender, reader = agents("sender"), agents("reader")
        here = MessageBus(module_env.settings(redis_url=redis_.url), deliver_here=True)
        plain = MessageBus(module_env.settings(redis_url=redis_.url))
        here.read(reader)  # connected: loads the scripts, opens the connections
        busy = threading.Thread(
            target=lambda: redis.Redis.from_url(redis_.url).eval(
                "local t = redis.call('TIME')[1] while redis.call('TIME')[1] - t < 3 do end",
                0,
            )
        )
        busy.start()

        def refusing_busy() -> bool:  # the script runs past the threshold: others get BUSY
            try:
                client.ping()
            except redis.ResponseError as exc:
                return str(exc).startswith("BUSY")
            return False

        wait_for(refusing_busy, 5, "Redis to answer BUSY", interval=0.01)
        try:
            receipts = [
                bus.send_message({"from": sender, "to": reader, "payload": n})
                for n, bus in enumerate((here, plain))
            ]
        finally:
            busy.join(10)
        assert [r.status.value for r in receipts] == ["queued", "queued"]
        here.close()
        plain.close()
    finally:
        client.close()
        redis_.stop()
        BREAKERS["redis"].success()  # this process's breaker counted the BUSY replies


def test_an_mcp_agent_s_send_is_refused_whole_while_redis_is_down(fresh_env, agents, tmp_path):
    """Trusted code's send goes to the broker degraded while Redis is down; an LLM agent's
    is refused (its rate limit, inbox caps and dedup live in Redis), and nothing of it is
    queued: the MCP tool said "bus unavailable" for a message it had sent, and the agent's
    retry was a duplicate."""
    redis_ = PrivateRedis(free_port(), tmp_path)
    redis_.start()
    bus = MessageBus(fresh_env.settings(redis_url=redis_.url))
    sender, reader = agents("sender"), agents("reader")
    try:
        bus.read(reader)  # known: mail for it is not refused as for an agent never seen
        bus.runtime.broker.ensure_topology()
        redis_.stop()
        with pytest.raises(BusUnavailable, match="nothing was sent, try again"):
            bus.as_agent(sender, front_door=True).send({"to": reader, "payload": "llm"})
        assert queue_depth(bus, "bus.normal") == 0
        # The positive control: trusted code's send is queued for the worker.
        receipt = bus.send_message({"from": sender, "to": reader, "payload": "trusted"})
        assert receipt.status.value == "queued" and queue_depth(bus, "bus.normal") == 1
    finally:
        bus.close()
        redis_.stop()
        BREAKERS["redis"].success()


@pytest.fixture
def cut_off(module_env):
    """A bus whose broker cannot be reached (every send is refused); this process's
    circuit breakers are closed again after it (they counted its failures)."""
    bus = MessageBus(
        module_env.settings(broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    )
    yield bus
    bus.close()
    BREAKERS["broker"].success()
    BREAKERS["redis"].success()


def test_a_send_refused_after_its_sender_delivered_it_leaves_no_copy_in_the_inbox(
    module_env, agents, cut_off
):
    """A message to a worker agent is delivered by its sender, which then publishes the
    agent's `bus.handle`; when the broker cannot take that (nor the `bus.deliver` task
    tried instead), the send is refused, and a refused send leaves nothing anywhere: not
    in the agent's inbox nor its history (a retry would have made a second copy, or under
    the same id never been delivered). Control: the same retried where the broker is up
    is delivered."""
    sender, agent = agents("sender"), agents("worker")
    with module_env.bus() as plain:
        plain.runtime.store.register_worker_agent(agent)
        plain.runtime.broker.declare_queue(agent_queue(plain.settings, agent))
    message = {"id": f"job-{agent}", "from": sender, "to": agent, "payload": 1}
    with pytest.raises(BusUnavailable):
        cut_off.send_message(message)
    with module_env.bus() as bus:
        assert bus.runtime.store.inbox_depth(agent) == (0, 0)
        assert bus.history(agent) == []
        with pytest.raises(NotFound):
            bus.status(message["id"])
        receipt = bus.send_message(message)
        assert receipt.status.value == "queued"
        assert bus.status(message["id"]).status.value == "delivered"
        assert bus.runtime.store.inbox_depth(agent) == (1, 0)


class LosingReplies:
    """A script backend (bus.scripts) whose connection breaks as chosen: `after` a round
    trip carrying one of the `scripts` ran (its reply lost), or `before` it is sent (a Redis
    blip), `times` times; the runner then does what it does on a broken connection."""

    def __init__(self, inner, scripts, *, after: bool, times: int = 1) -> None:
        self.inner, self.shas = inner, [s.sha.encode() for s in scripts]
        self.after, self.left = after, times

    def send(self, packed: bytes, count: int):
        hit = self.left > 0 and any(sha in packed for sha in self.shas)
        if hit and not self.after:
            self.left -= 1
            raise redis.ConnectionError("connection broke (injected)")
        replies = self.inner.send(packed, count)
        if hit:
            self.left -= 1
            raise redis.ConnectionError("reply lost (injected)")
        return replies

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    "fault",
    ["reply of admission and delivery lost", "admission failed"],
)
def test_a_send_refused_after_a_redis_fault_leaves_nothing_in_the_inbox(
    module_env, agents, cut_off, fault
):
    """The delivery a sender makes itself is taken back when the send is refused, also when
    its first round trip ran but its reply was lost (the re-run then says "0 newly"); a send
    whose admission Redis failed leaves the delivery to the worker (nothing to take back).
    The broker here cannot be reached, so every send is refused."""
    sender, agent = agents("sender"), agents("worker")
    with module_env.bus() as plain:
        plain.runtime.store.register_worker_agent(agent)
    runtime = cut_off.runtime
    if fault == "admission failed":
        faulty = LosingReplies(BACKEND(runtime.redis), [scripts.ADMIT], after=False, times=2)
    else:
        faulty = LosingReplies(BACKEND(runtime.redis), [scripts.DELIVER], after=True)
    runtime.scripts = ScriptRunner(runtime.redis, runtime.replication, backend=faulty)
    with pytest.raises(BusUnavailable):
        cut_off.send_message({"from": sender, "to": agent, "payload": 1})
    assert faulty.left == 0  # the fault happened
    with module_env.bus() as bus:
        assert bus.runtime.store.inbox_depth(agent) == (0, 0)
        assert bus.history(agent) == []


def test_an_inbox_keeps_one_senders_order_whichever_delivery_finishes_first(fresh_env, agents):
    """Each send is its own delivery task (or a linger group's): with several worker
    threads a later one could finish first, and one thread's consecutive sends were read
    out of order. Their place in line is taken at admission."""
    bus = fresh_env.bus()
    sender, reader = agents("sender"), agents("reader")
    publish, wires = bus.runtime.broker.publish, []

    def captured(task, args, **kwargs):
        wires.append(args[0])
        publish(task, args, **kwargs)

    bus.runtime.broker.publish = captured
    ids = [bus.send_message({"from": sender, "to": reader, "payload": n}).id for n in range(3)]
    bus.runtime.broker.publish = publish
    for wire in reversed(wires):  # the last task's worker thread is the first done
        assert bus.runtime.deliverer.attempt(wire, 0).kind == "delivered"
    assert [m.id for m in bus.read(reader, limit=10)] == ids
    fresh_env.start_worker()  # the tasks themselves, still queued, deliver nothing twice
    wait_for(lambda: bus.stats().queue_depths.get("bus.normal", 0) == 0, 30, "the queue")
    assert sum(bus.runtime.store.inbox_depth(reader)) == 3
