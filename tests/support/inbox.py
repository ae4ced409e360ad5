"""Reading an inbox in tests the way an agent does: until the mail expected is there."""

from __future__ import annotations

from typing import Any

from tests.support.waiting import wait_for


def read_all(bus: Any, agent: str, count: int, timeout: float = 20, ack: bool = True) -> list[Any]:
    """Reads (and acks, unless told not to) until `count` messages came; returns them."""
    got: list[Any] = []

    def enough() -> bool:
        messages = bus.read(agent, limit=100, wait=0.5)
        if ack and messages:
            bus.ack(agent, [m.id for m in messages])
        got.extend(messages)
        return len(got) >= count

    wait_for(enough, timeout, f"{count} message(s) for {agent}", interval=0)
    return got


def full_inbox_of(bus: Any, agents: Any, size: int = 4) -> Any:
    """An asker (an AgentHandle, connected) whose inbox of `size` (the bus's INBOX_MAX)
    two other agents filled, half each (their shares): answers to it are refused for now."""
    asker = bus.as_agent(agents("asker"))
    asker.read()  # connected
    for other in (agents("carol"), agents("dave")):
        for i in range(size // 2):
            bus.as_agent(other).send({"to": asker.agent, "payload": i})
    wait_for(lambda: asker.unread() == size, 30, "a full inbox")
    return asker


def broadcast_among(bus: Any, agents: Any, names: tuple[str, ...] = ("a", "b", "c")) -> Any:
    """Agents of these names connected (registered by a first read), then a broadcast from
    the first of them: (its receipt, the agents)."""
    connected = [agents(name) for name in names]
    for agent in connected:
        bus.read(agent, limit=1)  # registers on first use
    return bus.broadcast(connected[0], {"hello": "all"}), connected
