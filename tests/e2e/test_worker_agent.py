"""The example worker agent, run by `msgbus agent run`, answering the Python API and an MCP
client; a failing handler retries and then lands in the dead letters with its error."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.env import audit_entries
from tests.support.mcp import call, stdio
from tests.support.processes import start_echo_agent
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def echo_agent(module_env, worker):
    proc, log = start_echo_agent(module_env, "agent-echo")
    yield log
    proc.terminate()
    proc.wait(20)


def test_worker_agent_answers_a_request_from_the_python_api(module_env, echo_agent, agents):
    bus = module_env.bus()
    asker = agents("asker")
    response = bus.request({"from": asker, "to": "echo", "payload": {"q": "hi"}}, timeout=30)
    assert response.sender == "echo" and response.type.value == "response"
    assert response.payload == {"echo": {"q": "hi"}, "from": "echo"}
    command = bus.request(
        {"from": asker, "to": "echo", "type": "command", "payload": {"text": "three little words"}},
        timeout=30,
    )
    assert command.payload == {"words": 3}
    # The handler answers first, then acks its inbox copy.
    wait_for(
        lambda: bus.status(command.correlation_id).status.value == "acked",
        10,
        "the request to be acked by the agent",
    )


def test_worker_agent_answers_an_mcp_request(module_env, echo_agent, agents):
    async def scenario():
        async with stdio(module_env, agents("claude")) as client:
            result = await call(
                client, "request", {"to": "echo", "payload": "from mcp", "timeout_seconds": 30}
            )
            assert result["status"] == "answered"
            assert result["response"]["payload"] == {"echo": "from mcp", "from": "echo"}

    asyncio.run(scenario())


def test_failing_handler_retries_then_is_dead_lettered_with_its_error(
    module_env, echo_agent, agents
):
    bus = module_env.bus()
    receipt = bus.send_message(
        {
            "from": agents("asker"),
            "to": "echo",
            "type": "request",
            "payload": {"fail": True, "why": "disk on fire"},
            "metadata": {"max_retries": 2},
        }
    )
    letters = wait_for(
        lambda: [d for d in bus.dead_letters() if d.id == receipt.id],
        60,
        "the failed request in the dead letters",
    )
    letter = letters[0]
    assert letter.reason == "handler_failed"
    assert "RuntimeError: asked to fail: disk on fire" in letter.error
    assert letter.attempts == 3
    assert letter.queue == "agent.echo"
    status = bus.status(receipt.id)
    assert status.status.value == "dead" and status.reason == "handler_failed"
    assert echo_agent.read_text().count("Retry in") >= 2


def test_an_answer_refused_for_now_is_retried_until_the_requester_has_room(fresh_env, agents):
    # Two agents fill the asker's inbox of 4 (2 each, their shares): the echo agent's answer
    # is refused for now (inbox full). It is retried, and arrives once the asker has read.
    fresh_env.overrides["MESSAGE_BUS_INBOX_MAX"] = "4"
    fresh_env.start_worker()
    proc, _ = start_echo_agent(fresh_env, "agent-echo")
    bus = fresh_env.bus()
    try:
        asker = bus.as_agent(agents("asker"))
        asker.read()  # connected
        for other in (agents("carol"), agents("dave")):
            for i in range(2):
                bus.as_agent(other).send({"to": asker.agent, "payload": i})
        wait_for(lambda: asker.unread() == 4, 30, "a full inbox")
        asked = asker.start_request({"to": "echo", "payload": "q", "metadata": {"max_retries": 20}})
        wait_for(
            lambda: any(
                (e["agent"], e["outcome"], e.get("rule")) == ("echo", "denied", "inbox_full")
                for e in audit_entries(bus)
            ),
            30,
            "the answer refused for now",
        )
        asker.ack([m.id for m in asker.read(limit=10)])  # room
        answer = wait_for(lambda: asker.response_to(asked), 30, "the answer")
        assert answer.payload == {"echo": "q", "from": "echo"}
    finally:
        bus.close()
        proc.terminate()
        proc.wait(20)
