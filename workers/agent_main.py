"""`msgbus agent run MOD:OBJ`: serve one worker agent from its own Celery queue."""

from __future__ import annotations

import argparse
import os
import sys

from workers.agent import load_agent
from workers.agent_runtime import SPEC_ENV


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="msgbus agent run")
    parser.add_argument("spec", help="MODULE:OBJECT naming a WorkerAgent")
    parser.add_argument("--concurrency", "-c", type=int, default=None)
    parser.add_argument("--loglevel", "-l", default="INFO")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.getcwd())
    try:
        agent = load_agent(args.spec)
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        print(f"error: cannot load worker agent {args.spec}: {exc}", file=sys.stderr)
        sys.exit(2)
    os.environ[SPEC_ENV] = args.spec
    from workers.agent_runtime import current_agent, register
    from workers.app import app, runtime

    register(current_agent(runtime) or agent, runtime)
    from bus.topology import agent_queue

    app.conf.task_queues = [*app.conf.task_queues, agent_queue(app.conf.bus_settings, agent.name)]
    app.worker_main(
        [
            "worker",
            "-Q",
            agent.queue,
            "-P",
            "threads",
            "-c",
            str(args.concurrency or agent.concurrency),
            "-l",
            args.loglevel,
            "-n",
            f"agent-{agent.name}@%h",
            "-E",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
