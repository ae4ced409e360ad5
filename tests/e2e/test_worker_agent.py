"""The example worker agent, run by `msgbus agent run`, answering the Python API and an MCP
client; a failing handler retries and then lands in the dead letters with its error."""

from __future__ import annotations

import asyncio
import json

import pytest

from bus.errors import NothingToReplay
from bus.topology import HANDLE_TASK, agent_queue
from tests.support.counting_agent import runs_key
from tests.support.inbox import full_inbox_of
from tests.support.mcp import call, stdio
from tests.support.processes import start_echo_agent
from tests.support.waiting import wait_for
from tests.support.wire import publish_dead

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


def send_failing_request(bus, asker, why, *, max_retries):
    """A request the echo agent's handler fails on (raises), `max_retries` times retried."""
    return bus.send_message(
        {
            "from": asker,
            "to": "echo",
            "type": "request",
            "payload": {"fail": True, "why": why},
            "metadata": {"max_retries": max_retries},
        }
    )


def test_failing_handler_retries_then_is_dead_lettered_with_its_error(
    module_env, echo_agent, agents
):
    bus = module_env.bus()
    receipt = send_failing_request(bus, agents("asker"), "disk on fire", max_retries=2)
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


def test_a_dead_message_gives_back_its_place_and_a_purge_forgets_it(module_env, echo_agent, agents):
    """A worker agent's message that died leaves its inbox at once (it once stayed there,
    counting against its sender's share, until an admin replayed or purged it): a marker
    keeps it for a replay, and a purge takes the marker too."""
    bus = module_env.bus()
    depth = lambda: sum(bus.runtime.store.inbox_depth("echo"))  # noqa: E731
    before = depth()
    receipt = send_failing_request(bus, agents("asker"), "bad input", max_retries=0)
    wait_for(lambda: any(d.id == receipt.id for d in bus.dead_letters()), 60, "the dead letter")
    assert depth() == before
    buried = bus.runtime.keys.buried("echo", receipt.id)
    assert bus.runtime.redis.exists(buried)  # the control: kept for a replay
    assert bus.purge_dead_letters([receipt.id]) == [receipt.id]
    assert not bus.runtime.redis.exists(buried)
    assert bus.status(receipt.id).status.value == "dead"
    assert not any(d.id == receipt.id for d in bus.dead_letters())


@pytest.fixture
def full_inbox(fresh_env, agents):
    """A counting worker agent, and an asker whose inbox of 4 two other agents filled (2
    each, their shares): the agent's answers to it are refused for now."""
    fresh_env.overrides["MESSAGE_BUS_INBOX_MAX"] = "4"
    fresh_env.start_worker()
    proc, _ = start_echo_agent(fresh_env, "agent-counter", "tests.support.counting_agent:agent")
    bus = fresh_env.bus()
    asker = full_inbox_of(bus, agents)
    yield bus, asker
    bus.close()
    proc.terminate()
    proc.wait(20)


def counting_agent_on(env):
    """The counting worker agent and a worker on `env`'s bus: yields the bus."""
    env.start_worker()
    proc, _ = start_echo_agent(env, "agent-counter", "tests.support.counting_agent:agent")
    bus = env.bus()
    yield bus
    bus.close()
    proc.terminate()
    proc.wait(20)


@pytest.fixture
def counter_agent(fresh_env):
    """The counting worker agent on a bus of its own; yields the bus."""
    yield from counting_agent_on(fresh_env)


def test_a_replayed_dead_letter_of_a_worker_agent_runs_its_handler_again(counter_agent, agents):
    """A handler failed to the end (its downstream was down), then the downstream is back:
    the replay runs the handler and the asker gets its answer. The count of handler runs
    (the guard against a handler that kills its process) once outlived the dead letter, so
    the replay's first run counted as one crash too many and the handler never ran."""
    bus = counter_agent
    asker = bus.as_agent(agents("asker"))
    asked = asker.start_request(
        {"to": "counter", "payload": {"fail_runs": 1}, "metadata": {"max_retries": 0}}
    )
    status = wait_for(lambda: (s := asker.status(asked)).status.value == "dead" and s, 60, "dead")
    assert status.reason == "handler_failed"  # the control: the first cycle's one run failed
    assert handler_runs(bus, asked) == 1
    wait_for(lambda: any(d.id == asked for d in bus.dead_letters()), 20, "the dead letter")
    assert bus.replay_dead_letters([asked]) == [asked]
    answer = wait_for(lambda: asker.response_to(asked), 30, "the replay's answer")
    assert answer.payload == {"runs": 2}
    assert handler_runs(bus, asked) == 2


def test_a_second_dispatch_of_a_request_beside_its_run_is_no_crash(counter_agent, agents):
    """A redelivered `bus.deliver` (its worker died after dispatching) or the outbox's
    resend publishes the handler's task again while the first run goes on. Counted as a
    crash, it killed a request allowed no retries: `dead`, and buried under the run that
    answered it."""
    bus = counter_agent
    asker = bus.as_agent(agents("asker"))
    asked = asker.start_request(
        {"to": "counter", "payload": {"hold_s": 2}, "metadata": {"max_retries": 0}}
    )
    wait_for(lambda: handler_runs(bus, asked) == 1, 30, "the first run")
    dispatch_again(bus, asked)
    wait_for(lambda: handler_runs(bus, asked) == 2, 30, "the second run, beside the first")
    answer = wait_for(lambda: asker.response_to(asked), 30, "the answer")
    assert answer.payload == {"runs": 1}  # the first run's: one answer per request
    status = wait_for(lambda: (s := asker.status(asked)).status.value == "acked" and s, 30, "acked")
    assert status.reason in (None, "")
    assert asked not in {d.id for d in bus.dead_letters()}


def test_a_request_answered_by_a_second_run_after_the_first_died_is_handled(counter_agent, agents):
    """Two runs of one request side by side (a second dispatch): the first failed and
    buried it, then the second answered. The request stayed `dead` with a replayable dead
    letter, and its replay ran the handler a third time."""
    bus = counter_agent
    asker = bus.as_agent(agents("asker"))
    asked = asker.start_request(
        {"to": "counter", "payload": {"hold_s": 2, "fail_runs": 1}, "metadata": {"max_retries": 0}}
    )
    wait_for(lambda: handler_runs(bus, asked) == 1, 30, "the first run")
    dispatch_again(bus, asked)
    answer = wait_for(lambda: asker.response_to(asked), 30, "the second run's answer")
    assert answer.payload == {"runs": 2}
    status = wait_for(lambda: (s := asker.status(asked)).status.value == "acked" and s, 30, "acked")
    assert (status.reason or "") == ""
    wait_for(lambda: any(d.id == asked for d in bus.dead_letters()), 20, "the first's letter")
    with pytest.raises(NothingToReplay, match="handled or purged since"):
        bus.replay_dead_letters([asked])
    assert handler_runs(bus, asked) == 2


def test_a_failing_request_past_its_ttl_is_not_run_again(counter_agent, agents):
    """The handler's own retries took no notice of the ttl: a request for 2 seconds ran
    again long after, and was answered for nobody, until its retries ran out."""
    bus = counter_agent
    asker = bus.as_agent(agents("asker"))
    asked = asker.start_request(
        {"to": "counter", "payload": {"fail_runs": 99}, "metadata": {"ttl": 2, "max_retries": 10}}
    )
    # (read past its ttl, a status still `retrying` says `expired` already: wait for the
    # worker's own word)
    status = wait_for(lambda: (s := asker.status(asked)).error and "ttl" in s.error and s, 60, "x")
    assert (status.status.value, status.reason) == ("expired", "expired")
    runs = handler_runs(bus, asked)
    assert 1 <= runs < 11  # the control: it did run, and was retried
    wait_for(lambda: any(d.id == asked for d in bus.dead_letters()), 20, "the dead letter")
    assert handler_runs(bus, asked) == runs
    with pytest.raises(NothingToReplay, match="ttl has passed"):
        bus.replay_dead_letters([asked])


def dispatch_again(bus, message_id):
    """Publishes the counting agent's task for `message_id` once more, as a redelivered
    `bus.deliver` or the outbox's resend does."""
    wire = bus.runtime.redis.hget(bus.runtime.keys.inbox("counter").body, message_id)
    bus.runtime.broker.publish(
        HANDLE_TASK,
        ["counter", wire],
        queue=agent_queue(bus.settings, "counter"),
        task_id=f"{message_id}:counter",
        summary="<a second dispatch>",
    )


def handler_runs(bus, message_id):
    return int(bus.runtime.redis.get(runs_key(bus.settings.key_prefix, message_id)) or 0)


def test_an_answer_refused_for_now_is_sent_again_once_there_is_room(full_inbox):
    bus, asker = full_inbox
    asked = asker.start_request({"to": "counter", "metadata": {"max_retries": 20}})
    status = wait_for(
        lambda: (s := asker.status(asked)).status.value == "retrying" and s, 30, "a retry"
    )
    assert status.reason == "reply_refused" and "inbox" in status.error
    asker.ack([m.id for m in asker.read(limit=10)])  # room
    answer = wait_for(lambda: asker.response_to(asked), 30, "the answer")
    assert answer.payload == {"runs": 1}
    assert handler_runs(bus, asked) == 1  # its answer was kept: the handler ran once


def test_an_answer_refused_to_the_end_leaves_the_request_dead_with_why(full_inbox):
    bus, asker = full_inbox
    asked = asker.start_request({"to": "counter", "metadata": {"max_retries": 2}})
    status = wait_for(lambda: (s := asker.status(asked)).status.value == "dead" and s, 60, "dead")
    assert status.reason == "reply_refused" and "inbox" in status.error
    assert handler_runs(bus, asked) == 1


def test_a_request_dead_after_its_answer_was_refused_to_the_end_is_answered_on_replay(
    full_inbox,
):
    """Its retries carried a wire of their own (each with its count of tries), so its dead
    letter is not the text its inbox holds: the replay once restarted nothing, and the
    handler's first run of the new cycle counted as a crash too many."""
    bus, asker = full_inbox
    asked = asker.start_request({"to": "counter", "metadata": {"max_retries": 2}})
    status = wait_for(lambda: (s := asker.status(asked)).status.value == "dead" and s, 60, "dead")
    assert status.reason == "reply_refused"
    asker.ack([m.id for m in asker.read(limit=10)])  # room
    wait_for(lambda: any(d.id == asked for d in bus.dead_letters()), 20, "the dead letter")
    assert bus.replay_dead_letters([asked]) == [asked]
    answer = wait_for(lambda: asker.response_to(asked), 30, "the replay's answer")
    assert answer.payload == {"runs": 2}  # a new cycle: the handler ran again


@pytest.fixture
def small_counter(fresh_env):
    """The counting worker agent with an inbox of 4 (2 per sender); yields the bus."""
    fresh_env.overrides["MESSAGE_BUS_INBOX_MAX"] = "4"
    yield from counting_agent_on(fresh_env)


def test_failing_requests_from_two_agents_leave_the_worker_agent_open_to_a_third(
    small_counter, agents
):
    """Two agents fill their shares of a worker agent's inbox with requests its handler
    fails on. They used to stay there as dead letters, the inbox full, until an admin came:
    every other agent's request was refused."""
    bus = small_counter
    failing = {"fail_runs": 99}
    doomed = [
        bus.as_agent(agents(who)).start_request(
            {"to": "counter", "payload": failing, "metadata": {"max_retries": 0}}
        )
        for who in ("alice", "alice", "bob", "bob")
    ]
    for asked in doomed:
        wait_for(lambda a=asked: bus.status(a).status.value == "dead", 60, "the failed request")
    carol = bus.as_agent(agents("carol"))
    answer = carol.request({"to": "counter", "payload": {}}, timeout=30)
    assert answer.payload == {"runs": 1}
    # each still there for a replay (the worker records a death before its reject)
    wait_for(lambda: set(doomed) <= {d.id for d in bus.dead_letters()}, 20, "the dead letters")


def test_a_leftover_copy_of_a_replayed_dead_letter_runs_nothing(counter_agent, fresh_env, agents):
    """A dead letter whose message was replayed and handled, or one copied onto the dead
    letters by anyone on the broker: a replay of it must not run the handler again."""
    bus = counter_agent
    asker = bus.as_agent(agents("asker"))
    asked = asker.start_request(
        {"to": "counter", "payload": {"fail_runs": 1}, "metadata": {"max_retries": 0}}
    )
    wait_for(lambda: any(d.id == asked for d in bus.dead_letters()), 60, "the dead letter")
    [wire] = [w for w in bus.runtime.store.history("counter", 100, None) if asked in w]
    assert bus.replay_dead_letters([asked]) == [asked]  # the control: it runs again
    assert wait_for(lambda: asker.response_to(asked), 30, "the answer").payload == {"runs": 2}
    wait_for(lambda: bus.status(asked).status.value == "acked", 30, "the ack")
    copy = json.dumps([["counter", wire], {}, {"callbacks": None}]).encode()
    publish_dead(fresh_env, f"{asked}:counter", copy, "application/json", {"task": "bus.handle"})
    wait_for(lambda: any(d.id == asked for d in bus.dead_letters()), 30, "the copy")
    with pytest.raises(NothingToReplay, match="nothing to replay"):
        bus.replay_dead_letters([asked])
    assert any(d.id == asked for d in bus.dead_letters())  # left for a person to purge
    assert handler_runs(bus, asked) == 2
    assert bus.status(asked).status.value == "acked"
