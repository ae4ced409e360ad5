"""Health and stats: what an operator (or the `health` tool) asks of the bus."""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from bus import metrics
from bus.breaker import states as breaker_states
from bus.errors import BusError
from bus.keyring import ProcessKeys, describe_keys, key_warnings
from bus.runtime import Runtime
from bus.topology import DEAD_LETTER_QUEUE, PRIORITY_QUEUES

logger = logging.getLogger(__name__)


class Health(BaseModel):
    ready: bool = Field(description="Redis and broker answer and at least one worker is live")
    redis: str
    broker: str
    workers: list[str] = Field(
        default_factory=list, description="live workers' node names (admins; others: [])"
    )
    worker_count: int = Field(default=0, description="live workers")
    dead_letters: int | None = None
    breakers: dict[str, str] = Field(default_factory=dict)
    processes: list[ProcessKeys] = Field(
        default_factory=list, description="running processes and the keys they sign/verify with"
    )
    warnings: list[str] = Field(default_factory=list)


class Stats(BaseModel):
    agents: int
    topics: int
    subscriptions: int
    queue_depths: dict[str, int]
    dead_letters: int
    inbox_depths: dict[str, int]


def queue_depths(runtime: Runtime) -> dict[str, int]:
    broker = runtime.broker
    broker.ensure_topology()
    with broker.connection() as conn:
        channel = conn.channel()
        try:
            return {
                q: int(channel.queue_declare(q, passive=True).message_count)
                for q in [*PRIORITY_QUEUES, DEAD_LETTER_QUEUE]
            }
        finally:
            channel.close()


def live_workers(runtime: Runtime, timeout: float = 1.0) -> list[str]:
    replies = runtime.broker.app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def check_health(runtime: Runtime, kind: str = "client") -> Health:
    """`kind`: what the asking process is, listed with its own keys beside the others."""
    redis_state = broker_state = "ok"
    processes = [describe_keys(runtime.codec, kind)]
    try:
        runtime.store.ping()
        processes += runtime.keyring.live()
    except BusError as exc:
        redis_state = f"down: {exc.message}"
    workers: list[str] = []
    dead: int | None = None
    try:
        depths = queue_depths(runtime)
        dead = depths[DEAD_LETTER_QUEUE]
        workers = live_workers(runtime)
    except Exception as exc:  # noqa: BLE001 - health reports, never raises
        broker_state = f"down: {exc}"
    return Health(
        ready=redis_state == "ok" and broker_state == "ok" and bool(workers),
        redis=redis_state,
        broker=broker_state,
        workers=workers,
        worker_count=len(workers),
        dead_letters=dead,
        breakers=breaker_states(),
        processes=processes,
        warnings=key_warnings(processes),
    )


def collect_stats(runtime: Runtime) -> Stats:
    store = runtime.store
    agents = [a for a, _, _ in store.agents()]
    topics = store.topics()
    depths = queue_depths(runtime)
    return Stats(
        agents=len(agents),
        topics=len(topics),
        subscriptions=sum(topics.values()),
        queue_depths={q: n for q, n in depths.items() if q != DEAD_LETTER_QUEUE},
        dead_letters=depths[DEAD_LETTER_QUEUE],
        inbox_depths=store.inbox_depths(agents),
    )


def refresh_gauges(runtime: Runtime) -> None:
    """Reads depths from the broker and Redis into the metrics gauges (best effort)."""
    try:
        stats = collect_stats(runtime)
    except Exception as exc:  # noqa: BLE001 - a scrape must not fail on an outage
        logger.warning("metrics refresh failed: %s", exc)
        return
    for queue, depth in stats.queue_depths.items():
        metrics.QUEUE_DEPTH.labels(queue).set(depth)
    metrics.DEAD_LETTERS.set(stats.dead_letters)
    metrics.SUBSCRIPTIONS.set(stats.subscriptions)
    metrics.INBOX_DEPTH.clear()
    # One series per agent would grow with every agent ever seen: the deepest inboxes get
    # their own, the rest are summed under "_other".
    deepest = sorted(stats.inbox_depths.items(), key=lambda item: -item[1])
    for agent, depth in deepest[: metrics.INBOX_SERIES]:
        metrics.INBOX_DEPTH.labels(agent).set(depth)
    if len(deepest) > metrics.INBOX_SERIES:
        rest = sum(depth for _, depth in deepest[metrics.INBOX_SERIES :])
        metrics.INBOX_DEPTH.labels("_other").set(rest)
