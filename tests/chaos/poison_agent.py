"""A worker agent with poison handlers for the chaos suite."""

import os

from workers.agent import WorkerAgent

agent = WorkerAgent("poison")


@agent.on("command")
def handle(message):
    action = message.payload.get("do")
    if action == "raise":
        raise ValueError("poison: this handler always raises")
    if action == "exit":
        os._exit(1)  # takes the whole worker process down
    return {"ok": message.payload.get("i")}
