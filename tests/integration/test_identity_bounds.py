"""What one agent's message can claim or change beyond itself: requests answered only in
the requester's own inbox, topic labels that need the right to publish, fields the reader
sets that a sender cannot preset, and sizes bounded apart from the payload."""

from __future__ import annotations

import threading

import pytest

from bus.errors import AuthError, LimitExceeded, ValidationError
from tests.support.waiting import wait_for

ACL = """
default: allow
agents:
  {sender}:
    publish: ["tasks/*"]
"""


def status_of(bus, message_id, viewer):
    return bus.as_agent(viewer).status(message_id).status.value


class RequestInFlight:
    """`bus.request` from `asker` to `asked` on a thread; `question` is the request as the
    asked agent read it, `answer()` what the request returned."""

    def __init__(self, bus, asker, asked):
        self.asked = bus.as_agent(asked)
        self._result = {}
        request = {"from": asker, "to": asked, "payload": "q"}
        self._thread = threading.Thread(
            target=lambda: self._result.update(got=bus.request(request, timeout=20))
        )
        self._thread.start()
        [self.question] = wait_for(lambda: self.asked.read(limit=1, wait=0.5), 15, "the request")

    def answer(self):
        self._thread.join(25)
        return self._result["got"]


def test_mail_to_others_naming_a_request_neither_answers_it_nor_acks_theirs(bus, agents):
    asker, asked, other = agents("asker"), agents("asked"), agents("other")
    bus.read(other)  # connected: mail for it is ordinary mail
    asker_handle = bus.as_agent(asker)
    request_id = asker_handle.start_request({"to": asked, "payload": "q"})
    # The asked agent first mails someone else under the request's id (tracing, say)...
    aside = bus.send_message(
        {"from": asked, "to": other, "type": "event", "correlation_id": request_id}
    )
    wait_for(lambda: bus.read(other, limit=1, wait=0.5), 15, "the aside in other's inbox")
    assert asker_handle.response_to(request_id) is None
    # ...which stays the other's: read by it, not acked by the asker's look.
    assert status_of(bus, aside.id, other) == "read"
    # The control: the real answer, addressed to the asker, answers it.
    answer = bus.send_message(
        {"from": asked, "to": asker, "type": "response", "correlation_id": request_id, "payload": 1}
    )
    got = wait_for(lambda: asker_handle.response_to(request_id), 15, "the answer")
    assert got.id == answer.id and got.payload == 1
    assert status_of(bus, answer.id, asker) == "acked"


def test_a_third_agents_answer_after_the_real_one_does_not_hide_it(bus, agents):
    # bob answers alice's request, then eve (who learned its id) "answers" it too: alice's
    # later look still finds bob's answer, and eve's message is ordinary mail in her inbox.
    alice, bob, eve = agents("alice"), agents("bob"), agents("eve")
    handle = bus.as_agent(alice)
    request_id = handle.start_request({"to": bob, "payload": "q"})

    def delivered(**message):
        sent = bus.send_message(
            {"to": alice, "type": "response", "correlation_id": request_id, **message}
        )
        wait_for(lambda: bus.status(sent.id).status.value == "delivered", 15, "delivery")
        return sent

    answer = delivered(**{"from": bob, "payload": 1})
    spoof = delivered(**{"from": eve, "payload": 2})
    got = handle.response_to(request_id, bob)
    assert got is not None and (got.id, got.payload) == (answer.id, 1)
    [aside] = handle.read()
    assert (aside.id, aside.sender, aside.payload) == (spoof.id, eve, 2)


def test_bus_request_waits_past_a_correlated_aside_for_its_own_answer(bus, agents):
    asker, asked, other = agents("asker"), agents("asked"), agents("other")
    bus.read(other)
    flight = RequestInFlight(bus, asker, asked)
    question = flight.question
    flight.asked.send({"to": other, "correlation_id": question.id, "payload": "aside"})
    flight.asked.send(
        {"to": asker, "type": "response", "correlation_id": question.id, "payload": "answer"}
    )
    assert flight.answer().payload == "answer"


def test_a_topic_label_on_a_direct_message_needs_the_right_to_publish(module_env, tmp_path, agents):
    sender, reader = agents("labeller"), agents("reader")
    acl = tmp_path / "acl.yaml"
    acl.write_text(ACL.format(sender=sender))
    bus = module_env.bus(acl_file=acl)
    try:
        allowed = {"from": sender, "to": reader, "topic": "tasks/new", "payload": 1}
        assert bus.send_message(allowed).status.value == "queued"  # the control
        for label in ({"topic": "secret"}, {"metadata": {"topic": "secret"}}):
            with pytest.raises(AuthError, match="label a message with topic secret"):
                bus.send_message({"from": sender, "to": reader, "payload": 1, **label})
        with pytest.raises(AuthError, match="topic secret"):
            bus.send_message({"from": sender, "to": "*", "topic": "secret", "payload": 1})
    finally:
        bus.close()


def test_other_agents_inbox_depths_are_for_admins(module_env, tmp_path, agents):
    me, other = agents("me"), agents("other")
    acl = tmp_path / "acl.yaml"
    acl.write_text(f"admins: [{agents('ops')}]\n")
    bus = module_env.bus(acl_file=acl)
    try:
        bus.read(me)
        bus.read(other)
        bus.send_message({"from": me, "to": other, "payload": 1})
        bus.send_message({"from": other, "to": me, "payload": 1})
        wait_for(lambda: bus.runtime.store.inbox_depth(me)[0] == 1, 15, "delivery to me")
        wait_for(lambda: bus.runtime.store.inbox_depth(other)[0] == 1, 15, "delivery to other")
        seen = {a.id: a.inbox_depth for a in bus.as_agent(me).agents()}
        assert seen[me] == 1 and seen[other] is None
        admin = {a.id: a.inbox_depth for a in bus.as_agent(agents("ops")).agents()}
        assert admin[me] == 1 and admin[other] == 1
    finally:
        bus.close()


@pytest.mark.parametrize(
    "extra",
    [
        {"decode_error": 123},
        {"decodeError": "signature does not verify; payload withheld"},
        {"verified": False},
        {"delivery_count": 9},
        {"sender": "mallory"},
    ],
    ids=lambda e: next(iter(e)),
)
def test_an_extra_field_may_not_take_a_name_of_the_bus_s_own(bus, agents, extra):
    sender, reader = agents("s"), agents("r")
    with pytest.raises(ValidationError, match=f"{next(iter(extra))}: a name of the bus's own"):
        bus.send_message({"from": sender, "to": reader, "payload": {"important": 1}, **extra})
    # The control: an extra field of its own name arrives as sent.
    bus.send_message({"from": sender, "to": reader, "payload": {"important": 1}, "x_note": 2})
    [got] = wait_for(lambda: bus.read(reader, limit=1, wait=0.5), 15, "the message")
    assert got.payload == {"important": 1} and got.model_extra["x_note"] == 2
    assert got.decode_error is None and got.verified


def test_everything_but_the_payload_is_bounded_apart(bus, agents):
    sender, reader = agents("s"), agents("r")
    with pytest.raises(LimitExceeded, match="everything but the payload takes .* the limit is"):
        bus.send_message({"from": sender, "to": reader, "payload": 1, "blob": "x" * 70_000})
    with pytest.raises(LimitExceeded, match="everything but the payload"):
        bus.send_message(
            {
                "from": sender,
                "to": reader,
                "payload": 1,
                "metadata": {"headers": {"h": "x" * 70_000}},
            }
        )
    # The control: the same bytes in the payload are fine.
    receipt = bus.send_message({"from": sender, "to": reader, "payload": "x" * 70_000})
    [got] = wait_for(lambda: bus.read(reader, limit=1, wait=0.5), 15, "the message")
    assert got.id == receipt.id and got.payload == "x" * 70_000


def test_one_message_larger_than_the_history_bound_does_not_empty_the_history(fresh_env, agents):
    fresh_env.start_worker(MESSAGE_BUS_HISTORY_MAX_BYTES="4096")
    bus = fresh_env.bus(history_max_bytes=4096)
    try:
        sender, reader = agents("s"), agents("r")
        for i in range(3):
            bus.send_message({"from": sender, "to": reader, "payload": i})
        wait_for(lambda: len(bus.history(reader)) == 3, 15, "three small entries")
        big = bus.send_message({"from": sender, "to": reader, "payload": "x" * 6000})
        wait_for(lambda: bus.runtime.store.inbox_depth(reader)[0] == 4, 15, "the big one")
        kept = [m.id for m in bus.history(reader)]
        assert big.id in kept, kept  # the newest stays (older ones made room for it)
    finally:
        bus.close()


def test_a_sender_may_not_preset_the_bus_s_count_of_tries(bus, agents):
    sender, reader = agents("s"), agents("r")
    with pytest.raises(ValidationError, match="metadata.retry_count: the bus's own count"):
        bus.send_message(
            {"from": sender, "to": reader, "payload": 1, "metadata": {"retry_count": 1000}}
        )
    receipt = bus.send_message({"from": sender, "to": reader, "payload": 1})  # the control
    [got] = wait_for(lambda: bus.read(reader, limit=1, wait=0.5), 15, "the message")
    assert got.id == receipt.id and got.metadata.retry_count == 0


def test_only_the_agent_asked_answers_a_request(bus, agents):
    asker, asked, mallory = agents("asker"), agents("asked"), agents("mallory")
    flight = RequestInFlight(bus, asker, asked)
    question = flight.question
    # Someone who learnt the request's id answers first, into the asker's inbox...
    forged = bus.as_agent(mallory).send(
        {"to": asker, "type": "response", "correlation_id": question.id, "payload": "forged"}
    )
    wait_for(lambda: bus.runtime.store.inbox_depth(asker)[0] == 1, 15, "the forged answer")
    flight.asked.send(
        {"to": asker, "type": "response", "correlation_id": question.id, "payload": "answer"}
    )
    got = flight.answer()
    assert got.payload == "answer" and got.sender == asked
    # ...and that stays in the inbox as ordinary mail, unread.
    [left] = bus.read(asker, limit=5)
    assert left.id == forged.id and left.sender == mallory
