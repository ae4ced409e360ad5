"""Who a message reaches: one agent (`to`), a topic's subscribers whose filters take its
type and priority, or every agent that has connected but the sender (broadcast).

The sender resolves recipients to charge and bound a send (bus.sender); the worker
resolves them again at delivery, when subscriptions may have changed (bus.delivery).
"""

from __future__ import annotations

import orjson

from bus.schema import Subscription


def topic_recipients(
    subscribers: dict[str, str], topic: str, message_type: str, priority: str, sender: str
) -> list[str]:
    """`subscribers`: agent -> its JSON filters, as the topic's index holds them."""
    out = []
    for agent, filters in sorted(subscribers.items()):
        if agent == sender:
            continue
        try:
            subscription = Subscription(agent=agent, topic=topic, **orjson.loads(filters))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            continue  # a damaged index entry: that subscriber is re-indexed on resubscribe
        if subscription.matches(message_type, priority):
            out.append(agent)
    return out


def broadcast_recipients(agents: list[str], sender: str) -> list[str]:
    return [agent for agent in agents if agent != sender]
