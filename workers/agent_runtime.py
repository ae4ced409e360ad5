"""The worker agent served by this process (`msgbus agent run MOD:OBJ` sets it)."""

from __future__ import annotations

import os
from functools import cache

from bus.reader import Reader
from workers.agent import WorkerAgent, load_agent
from workers.app import runtime

SPEC_ENV = "MESSAGE_BUS_AGENT_SPEC"


@cache
def current_agent() -> WorkerAgent | None:
    spec = os.environ.get(SPEC_ENV)
    if not spec:
        return None
    agent = load_agent(spec)
    agent.use_bus(_bus())
    return agent


@cache
def reader() -> Reader:
    return Reader(runtime)


def _bus():  # type: ignore[no-untyped-def]
    from bus.client import MessageBus

    return MessageBus(runtime=runtime)


def register(agent: WorkerAgent) -> None:
    """Marks the agent as served by a worker-agent process and declares its queue."""
    from bus.topology import agent_queue

    runtime.store.register_worker_agent(agent.name)
    runtime.broker.declare_queue(agent_queue(runtime.settings, agent.name))
