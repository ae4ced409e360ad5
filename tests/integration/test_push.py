"""The MCP server's inbox wake-ups (mcp_server.push.InboxEvents) on real Redis, with a real
worker delivering: a long-poll watches an inbox from before its first look, so a delivery
that lands between a look and the wait wakes it at once instead of after the next step."""

from __future__ import annotations

import asyncio
import time

import pytest

from mcp_server.push import InboxEvents, LegacySubscriptions, inbox_uri
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def woken_then_quiet(module_env, bus, watch, arrive) -> tuple[bool, bool]:
    """Inside `watch(events)` (a look found nothing), `arrive()` makes the event happen
    and waits until it can be seen; then the wait, and a control wait with nothing new."""

    async def scenario() -> tuple[bool, bool]:
        events = InboxEvents(module_env.settings().redis_url, bus.runtime.keys)
        try:
            async with watch(events) as wait:
                await asyncio.to_thread(arrive)
                woken = await wait(10)
                quiet = await wait(0.3)  # the control: nothing came since
            return woken, quiet
        finally:
            await events.close()

    return asyncio.run(scenario())


def test_a_delivery_between_a_look_and_the_wait_wakes_the_wait(module_env, worker, bus, agents):
    sender, reader = agents("s"), agents("r")
    unread = bus.as_agent(reader).unread

    def arrive() -> None:
        bus.send_message({"from": sender, "to": reader, "payload": 1})
        wait_for(lambda: unread() == 1, 15, "the delivery")

    got = woken_then_quiet(module_env, bus, lambda e: e.watching_inbox(reader), arrive)
    assert got == (True, False)


def test_an_answer_between_a_look_and_the_wait_wakes_the_request(module_env, worker, bus, agents):
    """The MCP `request` tool's wait for its answer: the answer is delivered after a look
    found nothing and before the wait (it once cleared the wake-up there and slept a step)."""
    asker, answerer = agents("asker"), agents("answerer")
    question = bus.send_message({"from": asker, "to": answerer, "type": "request", "payload": 1})
    response_to = bus.as_agent(asker).response_to

    def arrive() -> None:
        answer = {"from": answerer, "to": asker, "type": "response", "payload": 2}
        bus.send_message({**answer, "correlation_id": question.id})
        wait_for(lambda: response_to(question.id) is not None, 15, "the answer")

    got = woken_then_quiet(module_env, bus, lambda e: e.watching_reply(asker, question.id), arrive)
    assert got == (True, False)


class RecordingSession:
    """What the SDK's session is to LegacySubscriptions: where its notices go."""

    def __init__(self) -> None:
        self.updated: list[str] = []

    async def send_resource_updated(self, uri: str) -> None:
        self.updated.append(uri)


async def until(check, seconds: float = 10.0, what: str = "the condition") -> None:
    """Polls `check()` until it is truthy; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.02)


def kill_listener(client, events: InboxEvents) -> int:
    """Closes the listener's Redis connection the way an outage or failover would."""
    ids = [c["id"] for c in client.client_list() if c.get("name") == events.client_name]
    for client_id in ids:
        client.client_kill_filter(_id=client_id)
    return len(ids)


def test_mail_that_came_before_the_listener_was_subscribed_is_told_once_it_is(
    module_env, worker, bus, agents
):
    """A delivery's push goes to no one while the process's listener is not yet
    subscribed (a `resources/subscribe` whose listener was slow to start once waited for
    new mail instead): once it is, each subscribed session hears that its inbox may have
    changed. Controls: a revoked session hears nothing; the next delivery is pushed."""
    sender, reader = agents("s"), agents("r")
    uri = inbox_uri(reader)
    unread = bus.as_agent(reader).unread

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        events = InboxEvents(module_env.settings().redis_url, bus.runtime.keys)
        legacy = LegacySubscriptions(events)
        subscriber, revoked = RecordingSession(), RecordingSession()
        legacy.add(uri, subscriber, lambda: True, reader)
        legacy.add(uri, revoked, lambda: False, reader)
        try:
            message = {"from": sender, "to": reader, "payload": 1}
            await asyncio.to_thread(bus.send_message, message)
            await asyncio.to_thread(wait_for, lambda: unread() == 1, 15, "the delivery")
            await events.start()
            await until(lambda: subscriber.updated)
            caught_up = list(subscriber.updated)
            await asyncio.to_thread(bus.send_message, {**message, "payload": 2})
            await until(lambda: len(subscriber.updated) > 1)
            return caught_up, subscriber.updated, revoked.updated
        finally:
            await events.close()

    told, later, revoked = asyncio.run(scenario())
    assert told == [uri]
    assert later == [uri, uri]  # the next delivery's own push
    assert revoked == []


def test_after_the_listener_reconnects_every_subscriber_and_stream_is_told_once(
    module_env, worker, bus, agents, redis_client
):
    """A lost listener connection (an outage, a failover) drops the pushes of what came
    meanwhile: once it has subscribed again, `resources/subscribe` sessions and listen
    streams each hear one catch-up notice for the inboxes they watch (control: a stream
    that watches nothing hears none), and pushes flow again."""
    sender, reader = agents("s"), agents("r")
    uri = inbox_uri(reader)

    async def scenario() -> tuple[int, list[str], list[str], list[str], list[str]]:
        events = InboxEvents(module_env.settings().redis_url, bus.runtime.keys)
        legacy = LegacySubscriptions(events)
        subscriber = RecordingSession()
        streamed: list[str] = []
        events.add_listener(lambda event: streamed.append(getattr(event, "uri", "")))
        try:
            await events.start()
            legacy.add(uri, subscriber, lambda: True, reader)
            with events.listening([uri]):
                killed = await asyncio.to_thread(kill_listener, redis_client, events)
                await until(lambda: subscriber.updated and streamed)
                caught_up = (list(subscriber.updated), list(streamed))
                message = {"from": sender, "to": reader, "payload": 1}
                await asyncio.to_thread(bus.send_message, message)
                await until(lambda: len(subscriber.updated) > 1 and len(streamed) > 1)
            return killed, *caught_up, subscriber.updated, streamed
        finally:
            await events.close()

    killed, told, streamed, later, streamed_later = asyncio.run(scenario())
    assert killed == 1
    assert told == [uri] and streamed == [uri]
    assert later == [uri, uri] and streamed_later == [uri, uri]


def test_a_reconnect_tells_nothing_to_a_listener_watching_no_inbox(
    module_env, bus, redis_client, agents
):
    """A stream watching no inbox hears no catch-up. The control: a resources/subscribe
    session on the same listener hears that reconnect's catch-up (told after the streams
    are), so by then the quiet stream would have heard it too."""
    uri = inbox_uri(agents("r"))

    async def scenario() -> list[object]:
        events = InboxEvents(module_env.settings().redis_url, bus.runtime.keys)
        legacy = LegacySubscriptions(events)
        control = RecordingSession()
        heard: list[object] = []
        events.add_listener(heard.append)
        try:
            await events.start()
            legacy.add(uri, control, lambda: True, "r")
            assert await asyncio.to_thread(kill_listener, redis_client, events) == 1
            await until(lambda: control.updated, 10, "the control's catch-up notice")
            return heard
        finally:
            await events.close()

    assert asyncio.run(scenario()) == []
