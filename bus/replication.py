"""Writes confirmed by Redis replicas before the bus calls them done (`WAIT`).

Redis replicates asynchronously: a write the primary has answered may not have reached any
replica when the primary dies, and Sentinel then promotes a replica without it. For a
delivery that is a lost message, because the worker acks the broker's task once its script
has returned. With ``MESSAGE_BUS_REDIS_MIN_REPLICAS=n`` every delivery, admission and ack is
followed by ``WAIT n timeout`` on the same connection, packed behind it (no extra round trip):

- a delivery confirmed by fewer than n replicas raises NotReplicated (transient): the task is
  retried, not acked. The retry's script writes again (at least the EXPIRE of the delivered
  set), so its WAIT covers the first attempt's writes too: replication is in order;
- an admission or an ack so confirmed is answered all the same (the broker already has the
  message; what a failover could undo is a dedup record or an ack, which makes a duplicate,
  never a loss), and the shortfall is logged and counted as ``errors_total{kind=
  "not_replicated"}``.

Sentinel promotes the replica with the most of the primary's stream, so with n >= 1 and one
server lost, every confirmed write survives the failover.

Invariant: WAIT goes on the connection that made the writes, right after them (WAIT counts
the replicas that have this connection's last write). bus.scripts.ScriptRunner sends it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import hiredis

from bus import metrics
from bus.errors import NotReplicated

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Replication:
    """`replicas` that must confirm each write, waiting at most `timeout` seconds (0: off)."""

    replicas: int = 0
    timeout: float = 1.0

    @property
    def on(self) -> bool:
        return self.replicas > 0

    @property
    def command(self) -> tuple[Any, ...]:
        return ("WAIT", self.replicas, max(1, int(self.timeout * 1000)))

    def packed(self) -> bytes:
        """WAIT in Redis's wire format, to send right behind the writes it covers."""
        return hiredis.pack_command(self.command) if self.on else b""

    def require(self, acknowledged: Any, action: str) -> None:
        """Raises NotReplicated when fewer replicas than required confirmed."""
        count = _count(acknowledged)
        if count < self.replicas:
            raise NotReplicated(self._shortfall(count, action) + "; it will be retried",
                acknowledged=count, required=self.replicas)  # fmt: skip

    def note(self, acknowledged: Any, action: str) -> None:
        """Logs and counts a shortfall of a write whose answer stands."""
        count = _count(acknowledged)
        if count < self.replicas:
            metrics.ERRORS.labels("not_replicated").inc()
            logger.warning("%s", self._shortfall(count, action))

    def _shortfall(self, count: int, action: str) -> str:
        return (
            f"bus unavailable: {count} of the {self.replicas} Redis replicas "
            f"MESSAGE_BUS_REDIS_MIN_REPLICAS asks for confirmed the write within "
            f"{self.timeout:g}s (MESSAGE_BUS_REDIS_REPLICA_TIMEOUT) while trying to {action}"
        )


def _count(acknowledged: Any) -> int:
    if isinstance(acknowledged, Exception):
        raise acknowledged
    return int(acknowledged)
