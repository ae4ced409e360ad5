"""Public names the design contract (DESIGN.md) fixes: the MCP tool profiles and the
Prometheus metrics. Written out here, not imported from the product, so that a test
comparing the product against them fails when the product drifts from the contract."""

from __future__ import annotations

CORE_TOOLS = (
    "send_message",
    "read_messages",
    "ack_messages",
    "subscribe",
    "unsubscribe",
    "get_history",
    "message_status",
    "request",
)
FULL_TOOLS = CORE_TOOLS + (
    "send_batch",
    "list_subscriptions",
    "list_agents",
    "list_dead_letters",
    "replay_dead_letters",
    "health",
    "bus_stats",
)
METRICS = (
    "message_bus_messages_total",
    "message_bus_message_duration_seconds_bucket",
    "message_bus_errors_total",
    "message_bus_circuit_state",
    "message_bus_queue_depth",
    "message_bus_dead_letters",
    "message_bus_inbox_depth",
    "message_bus_subscriptions",
)
