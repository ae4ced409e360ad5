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
