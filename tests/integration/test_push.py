"""The MCP server's inbox wake-ups (mcp_server.push.InboxEvents) on real Redis, with a real
worker delivering: a long-poll watches an inbox from before its first look, so a delivery
that lands between a look and the wait wakes it at once instead of after the next step."""

from __future__ import annotations

import asyncio

import pytest

from mcp_server.push import InboxEvents
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
