"""The worker agent served by this process (`msgbus agent run MOD:OBJ` sets it).

It imports nothing of the Celery app (workers.app imports the tasks, which ask for the
agent): the app's runtime is passed in.
"""

from __future__ import annotations

from bus.client import MessageBus
from bus.runtime import Runtime
from bus.topology import agent_queue
from workers.agent import WorkerAgent

_served: list[WorkerAgent] = []  # the one agent of this process, once it serves one


def current_agent() -> WorkerAgent | None:
    return _served[0] if _served else None


def serve_agent(agent: WorkerAgent, runtime: Runtime) -> None:
    """Makes `agent` this process's worker agent: it sends through this runtime, is marked
    as served by a worker-agent process, and its queue is declared."""
    # Its answers are delivered here, inside the handle task (which retries on failure).
    agent.use_bus(MessageBus(runtime=runtime, deliver_here=True))
    _served[:] = [agent]
    runtime.store.register_worker_agent(agent.name)
    runtime.broker.declare_queue(agent_queue(runtime.settings, agent.name))
