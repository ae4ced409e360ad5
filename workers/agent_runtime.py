"""The worker agent served by this process (`msgbus agent run MOD:OBJ` sets it).

It imports nothing of the Celery app (workers.app imports the tasks, which ask for the
agent): the app's runtime is passed in.
"""

from __future__ import annotations

import os
from functools import cache

from bus.client import MessageBus
from bus.runtime import Runtime
from bus.topology import agent_queue
from workers.agent import WorkerAgent, load_agent

SPEC_ENV = "MESSAGE_BUS_AGENT_SPEC"


@cache
def current_agent(runtime: Runtime) -> WorkerAgent | None:
    spec = os.environ.get(SPEC_ENV)
    if not spec:
        return None
    agent = load_agent(spec)
    agent.use_bus(MessageBus(runtime=runtime))
    return agent


def register(agent: WorkerAgent, runtime: Runtime) -> None:
    """Marks the agent as served by a worker-agent process and declares its queue."""
    runtime.store.register_worker_agent(agent.name)
    runtime.broker.declare_queue(agent_queue(runtime.settings, agent.name))
