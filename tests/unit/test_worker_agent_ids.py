"""A worker agent's answer ids: the same for every run of one answer (a handler run again
answers once), and not computable by anyone without the bus's secret (who could otherwise
claim an answer's id first and get the real answer refused)."""

from __future__ import annotations

import uuid

from bus.client import MessageBus
from bus.settings import Settings
from workers.agent import WorkerAgent


def answer_id(secret: str, request_id: str = "req-1", kind: str = "response") -> str:
    agent = WorkerAgent("echo")
    bus = MessageBus(Settings(secret=secret))
    agent.use_bus(bus)
    try:
        return agent.answer_id(request_id, kind)
    finally:
        bus.close()


def test_an_answer_id_is_stable_for_one_answer_and_differs_per_request_and_kind():
    first = answer_id("s" * 32)
    assert uuid.UUID(first).version == 4
    assert answer_id("s" * 32) == first
    assert answer_id("s" * 32, request_id="req-2") != first
    assert answer_id("s" * 32, kind="error") != first


def test_an_answer_id_depends_on_the_secret():
    assert answer_id("s" * 32) != answer_id("t" * 32)


def sealer(secret: str = "s" * 32) -> tuple[WorkerAgent, MessageBus]:
    agent = WorkerAgent("echo")
    bus = MessageBus(Settings(secret=secret))
    agent.use_bus(bus)
    return agent, bus


def test_a_kept_answer_opens_only_for_its_request_unaltered_and_under_the_secret():
    agent, bus = sealer()
    other, other_bus = sealer("t" * 32)
    try:
        kept = agent.seal("req-1", {"answer": 42})
        assert agent.unseal("req-1", kept) == (True, {"answer": 42})
        assert agent.unseal("req-2", kept)[0] is False  # another request's
        assert agent.unseal("req-1", [{"answer": 43}, kept[1]])[0] is False  # altered
        assert other.unseal("req-1", kept)[0] is False  # sealed under another secret
        assert agent.unseal("req-1", [{"answer": 42}])[0] is False  # no seal at all
    finally:
        bus.close()
        other_bus.close()
