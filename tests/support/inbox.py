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
