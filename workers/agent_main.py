"""Serving one worker agent from its own Celery queue (`msgbus agent run MOD:OBJ`)."""

from __future__ import annotations

from bus.errors import ConfigError
from bus.topology import agent_queue
from workers.agent import load_agent
from workers.agent_runtime import serve_agent
from workers.app import app, runtime


def serve(spec: str, concurrency: int | None = None, loglevel: str = "INFO") -> None:
    """Runs a Celery worker on the agent's queue `agent.<name>` until stopped."""
    try:
        agent = load_agent(spec)
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load worker agent {spec}: {exc}") from None
    serve_agent(agent, runtime)
    app.conf.task_queues = [*app.conf.task_queues, agent_queue(runtime.settings, agent.name)]
    app.worker_main(
        [
            "worker",
            "-Q",
            agent.queue,
            "-P",
            "threads",
            "-c",
            str(concurrency or agent.concurrency),
            "-l",
            loglevel,
            "-n",
            f"agent-{agent.name}@%h",
            # No -E: task events follow MESSAGE_BUS_TASK_EVENTS as on the delivery workers
            # (Flower turns them on when it connects). Each event is a confirmed publish
            # from the consumer's event loop: with -E a round trip through an agent spent
            # more time there than in the handler task.
            "--without-gossip",
            "--without-mingle",
        ]
    )
