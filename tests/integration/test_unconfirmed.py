"""A sender that dies between admission and the broker's confirm loses nothing: the beat job
`bus.resend_unconfirmed` (bus.outbox) publishes what it admitted once its lease has passed.

Before, such a message stayed `queued` for good with no task anywhere, and a request to a
worker agent whose sender delivered it itself and died before publishing its `bus.handle`
task stayed `delivered`, never handled, never answered: nothing swept either.

The senders here are real processes killed with SIGKILL at the named step.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import orjson
import pytest

from bus.errors import BusUnavailable, NotFound
from bus.outbox import resend_unconfirmed
from tests.support.processes import start_echo_agent, stop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

# Runs one send and SIGKILLs itself at the step named: "publish" (the broker never got the
# task) or "dispatch" (delivered by the sender itself, its handler's task never published).
KILLED_SENDER = """
import json, os, signal, sys
from bus import MessageBus
bus = MessageBus()
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
step, message = sys.argv[1], json.loads(sys.argv[2])
if step == "publish":
    bus.runtime.broker.publish = die
else:
    bus.runtime.deliverer.dispatch = die
bus.send_message(message)
print("sent", flush=True)
"""


@pytest.fixture(scope="module")
def echo_agent(module_env, worker):
    proc, log = start_echo_agent(module_env, "agent-echo-unconfirmed")
    yield log
    stop(proc)


def killed_send(env, step, message):
    done = subprocess.run(
        [sys.executable, "-c", KILLED_SENDER, step, orjson.dumps(message).decode()],
        env=env.env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


def unconfirmed(bus):
    return bus.runtime.store.redis.zrange(bus.runtime.store.keys.unconfirmed, 0, -1)


def past_the_lease(bus):
    return bus.runtime.clock.now_ms() + bus.runtime.retention.send_lease_ms + 1000


def test_a_message_whose_sender_died_before_the_publish_is_published_by_the_sweep(
    module_env, bus, agents
):
    sender, receiver = agents("sender"), agents("receiver")
    assert bus.read(receiver, limit=1, wait=0) == []  # connected: mail for it is ordinary
    message = {"id": f"m-{sender}", "from": sender, "to": receiver, "payload": {"n": 1}}
    killed_send(module_env, "publish", message)
    assert bus.status(message["id"]).status.value == "queued"
    assert message["id"] in unconfirmed(bus)

    # Within its lease the sender may still be on its way: the sweep leaves it (control).
    assert resend_unconfirmed(bus.runtime)["resent"] == 0
    assert message["id"] in unconfirmed(bus)

    assert resend_unconfirmed(bus.runtime, now_ms=past_the_lease(bus))["resent"] == 1
    got = wait_for(lambda: bus.read(receiver, limit=10, wait=0.5), 30, "the message")
    assert [(m.id, m.payload) for m in got] == [(message["id"], {"n": 1})]
    assert bus.status(message["id"]).status.value in ("delivered", "read")
    assert unconfirmed(bus) == []
    # Once is enough: the next pass has nothing to do, and a retry is its duplicate.
    assert resend_unconfirmed(bus.runtime, now_ms=past_the_lease(bus))["resent"] == 0
    assert bus.send_message(message).status.value == "duplicate"


def test_a_request_its_sender_delivered_before_dying_is_handled_and_answered(
    module_env, bus, agents, echo_agent
):
    asker = agents("asker")
    assert bus.read(asker, limit=1, wait=0) == []
    request = {
        "id": f"r-{asker}",
        "from": asker,
        "to": "echo",
        "type": "request",
        "reply_to": asker,
        "payload": {"q": "still there?"},
    }
    killed_send(module_env, "dispatch", request)
    assert bus.status(request["id"]).status.value == "delivered"
    assert request["id"] in unconfirmed(bus)

    assert resend_unconfirmed(bus.runtime, now_ms=past_the_lease(bus))["resent"] == 1
    got = wait_for(lambda: bus.read(asker, limit=10, wait=0.5), 30, "the answer")
    assert [(m.correlation_id, m.payload["echo"]) for m in got] == [
        (request["id"], {"q": "still there?"})
    ]


def test_sends_that_went_through_leave_nothing_unconfirmed(module_env, bus, agents, echo_agent):
    """The control of the two above: what the broker confirmed is off the list at once,
    single, batched and to a worker agent alike, and the sweep has nothing to send."""
    sender, receiver = agents("sender"), agents("receiver")
    bus.send_message({"from": sender, "to": receiver, "payload": 1})
    bus.send_message({"from": sender, "to": receiver, "payload": 2, "id": f"given-{sender}"})
    bus.send_batch([{"from": sender, "to": receiver, "payload": n} for n in range(3)])
    bus.request({"from": sender, "to": "echo", "payload": {"q": 1}}, timeout=30)
    assert unconfirmed(bus) == []
    assert resend_unconfirmed(bus.runtime, now_ms=past_the_lease(bus)) == {
        "resent": 0,
        "settled": 0,
        "expired": 0,
    }


def test_a_send_the_broker_refused_leaves_nothing_to_publish_later(module_env, agents):
    bus = module_env.bus()
    sender, receiver = agents("sender"), agents("receiver")

    def refused(*args, **kwargs):
        raise BusUnavailable("the broker is away (test)")

    bus.runtime.broker.publish = refused
    with pytest.raises(BusUnavailable):
        bus.send_message({"id": f"x-{sender}", "from": sender, "to": receiver, "payload": 0})
    with pytest.raises(NotFound):
        bus.status(f"x-{sender}")
    assert unconfirmed(bus) == []


def test_an_unconfirmed_message_past_its_ttl_is_marked_expired_not_sent(module_env, bus, agents):
    sender, receiver = agents("sender"), agents("receiver")
    assert bus.read(receiver, limit=1, wait=0) == []
    message = {"id": f"t-{sender}", "from": sender, "to": receiver, "payload": 0}
    killed_send(module_env, "publish", message | {"metadata": {"ttl": 5}})
    later = past_the_lease(bus) + 5000
    assert resend_unconfirmed(bus.runtime, now_ms=later) == {
        "resent": 0,
        "settled": 0,
        "expired": 1,
    }
    status = bus.status(message["id"])
    assert (status.status.value, status.reason) == ("expired", "expired")
    assert unconfirmed(bus) == []
