"""The KEYS and ARGV of the delivery scripts (DELIVER, DELIVER_INBOX, and what REVOKE takes back), built
from the keyspace: what one delivery touches, in the order each script's contract says."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bus.keys import Keys

if TYPE_CHECKING:
    from bus.store import Retention


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message for the DELIVER script: into each recipient's inbox and history."""

    message_id: str
    wire: str
    rank: int
    ts_ms: int
    recipients: list[str]
    attempts: int
    correlation_id: str | None
    sender: str = ""
    to: str = ""  # the direct recipient ('' for topic and broadcast)


def delivery(
    k: Keys, r: Retention, now: float, d: Delivery, admitted_by: str = ""
) -> tuple[list[str], list[Any]]:
    """DELIVER's KEYS and ARGV for `d` (`admitted_by`: see scripts.DELIVER)."""
    message_id, correlation_id = d.message_id, d.correlation_id
    # A message answers a request only for its one recipient (the requester waits on
    # its own pointer); fan-out carries its correlation id as data alone.
    answered = d.recipients[0] if correlation_id and len(d.recipients) == 1 else None
    keys = [
        k.status(message_id),
        k.delivered(message_id),
        k.agents,
        k.inbox_seq,
        k.reply(answered, correlation_id) if answered and correlation_id else k.status(message_id),
        k.rate_bucket("delivered", int(now)),
        k.status(correlation_id) if answered and correlation_id else k.status(message_id),
        k.dedup_id(message_id),
    ]
    args: list[Any] = [
        message_id,
        d.wire,
        d.rank,
        r.history_limit,
        r.status_retention,
        d.attempts,
        k.reply_channel(answered, correlation_id) if answered and correlation_id else "",
        d.ts_ms,
        r.history_max_bytes,
        d.sender,
        r.history_share,
        d.to,
        admitted_by,
    ]
    for agent in d.recipients:
        inbox = k.inbox(agent)
        keys += [inbox.ready, inbox.body, inbox.meta]
        keys += [k.history(agent), k.history_bytes(agent), k.history_senders(agent)]
        keys += [inbox.pending, inbox.senders]
        args += [agent, k.inbox_channel(agent)]
    return keys, args


def inbox_delivery(
    k: Keys, r: Retention, now: float, agent: str, group: Sequence[Delivery]
) -> tuple[list[str], list[Any]]:
    """DELIVER_INBOX's KEYS and ARGV: `group`, direct messages to `agent`."""
    inbox = k.inbox(agent)
    keys = [
        k.rate_bucket("delivered", int(now)),
        k.inbox_seq,
        inbox.ready,
        inbox.body,
        inbox.meta,
        k.history(agent),
        k.history_bytes(agent),
        k.history_senders(agent),
        inbox.pending,
        inbox.senders,
    ]
    args: list[Any] = [
        r.history_limit,
        r.status_retention,
        r.history_max_bytes,
        r.history_share,
        agent,
        k.inbox_channel(agent),
    ]
    for d in group:
        keys += [k.status(d.message_id), k.delivered(d.message_id), k.dedup_id(d.message_id)]
        args += [d.message_id, d.wire, d.rank, d.ts_ms, d.sender, d.attempts]
    return keys, args


def undelivery_keys(k: Keys, message_id: str, recipients: Sequence[str]) -> list[str]:
    """The keys REVOKE takes a delivery back from: the delivered-set, then per recipient its
    inbox (ready, leased, body, meta, per-sender counts) and history (entries, bytes,
    per-sender counts)."""
    keys = [k.delivered(message_id)]
    for agent in recipients:
        inbox = k.inbox(agent)
        keys += [*inbox.all(), inbox.senders]
        keys += [k.history(agent), k.history_bytes(agent), k.history_senders(agent)]
    return keys


def by_inbox(deliveries: Sequence[Delivery]) -> list[tuple[str, list[Delivery]]] | None:
    """The direct deliveries grouped by their recipient, in order within each group; None
    when any is not direct (topic, broadcast), is an answer (its reply key), or has an id
    seen twice (a group's script would not keep their order against the others')."""
    groups: dict[str, list[Delivery]] = {}
    seen: set[str] = set()
    for d in deliveries:
        direct = d.recipients == [d.to]
        if not direct or d.correlation_id or d.message_id in seen:
            return None
        seen.add(d.message_id)
        groups.setdefault(d.recipients[0], []).append(d)
    return list(groups.items())
