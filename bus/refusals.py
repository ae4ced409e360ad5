"""The errors of a send that did not go through: what an admission's refusal says (and
audits), a batch the broker took in part, a send whose dedup key stayed in flight, an
admission Redis failed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bus.admission import InFlight, RateLimit
from bus.errors import (
    BusError,
    BusUnavailable,
    InboxFull,
    LimitExceeded,
    UnknownAgent,
    ValidationError,
)
from bus.guard import Guard
from bus.hooks import Hooks
from bus.redis_conn import may_have_run
from bus.schema import Message
from bus.settings import Settings


def admission_refusal(
    guard: Guard,
    hooks: Hooks,
    settings: Settings,
    messages: Sequence[Message],
    refusal: tuple[str, ...],
    limits: Mapping[str, RateLimit | None],
) -> BusError:
    """The error for a refused admission (nothing was written), audited. A rate refusal
    names the sender whose bucket refused (a batch may carry several)."""
    kind, *details = refusal
    limit = limits.get(details[1]) if kind in ("rate_limited", "too_costly") else None
    if limit is not None:  # only a limited sender has a bucket
        sender = details[1]
        if kind == "rate_limited":
            return guard.throttled(sender, limit, int(details[0]))
        hooks.refused(sender, "rate_limited", "", cost=details[0])
        return LimitExceeded(
            f"this send reaches {details[0]} recipients, more than {sender}'s rate limit "
            f"ever allows at once (burst {limit.burst}); send fewer at a time, or raise "
            "the agent's burst (ACL 'burst' or MESSAGE_BUS_RATE_BURST)",
            limit="rate_burst",
            cost=int(details[0]),
        )
    if kind in ("rate_limited", "too_costly"):
        return BusError(f"send refused: {' '.join(refusal)}")
    index = int(details[0]) - 1
    message = messages[index]
    sender = message.sender
    if kind == "conflict":
        return ValidationError(
            f"id {message.id!r} belongs to another sender's message; leave 'id' out and "
            "the bus makes a fresh one (use metadata.dedup_key to make retries safe)",
            id=message.id,
        )
    if kind == "unknown_agent":
        hooks.refused(sender, "send", details[1], rule="unknown_agent")
        return UnknownAgent(
            f"no agent {details[1]!r} has connected to the bus, and {sender} already has "
            f"mail waiting for {settings.max_unseen_recipients} agents that have "
            "not (MESSAGE_BUS_MAX_UNSEEN_RECIPIENTS): check the name, or wait until it "
            "connects (reads, subscribes or sends) or an admin declares it",
            agent=details[1],
        )
    if kind == "share_full":
        hooks.refused(sender, "send", details[1], rule="inbox_share")
        return InboxFull(
            f"{sender} already has {details[2]} messages waiting in the inbox of "
            f"{details[1]}, its share of it (MESSAGE_BUS_SENDER_SHARE of "
            f"MESSAGE_BUS_INBOX_MAX); nothing was sent: retry once it has read some",
            limit="sender_share",
            agent=details[1],
        )
    if kind == "inbox_full":
        hooks.refused(sender, "send", details[1], rule="inbox_full")
        return InboxFull(
            f"the inbox of {details[1]} holds {details[2]} messages, its limit "
            f"(MESSAGE_BUS_INBOX_MAX); nothing was sent: retry once it has read some",
            limit="inbox_max",
            agent=details[1],
        )
    return BusError(f"send refused: {' '.join(refusal)}")


def partly_sent(error: BusError, queued: Sequence[tuple[int, Message]], unsent: int) -> BusError:
    """The refusal of a batch's later task, saying which messages (by position in the batch
    and id) its earlier tasks queued: those are delivered. A retry of the whole batch is
    safe for the items that carry an id or a dedup key (those come back as duplicates);
    items without one would be sent again."""
    ids = [m.id for _, m in queued]
    items = [i for i, _ in queued]
    shown = ", ".join(f"#{i} {m.id}" for i, m in queued[:10]) + (", ..." if len(ids) > 10 else "")
    # (not copy.copy: it calls __init__ again, which errors with keyword-only fields refuse)
    partial = type(error).__new__(type(error))
    partial.__dict__.update(error.__dict__)
    partial.message = (
        f"partly sent: {len(ids)} of the messages are queued (items {shown}; counted from "
        f"0); for the other {unsent}: {error.message}. Retry only the others, or the whole "
        "batch where every item carries a dedup key"
    )
    partial.args = (partial.message,)
    partial.fields = {**error.fields, "queued": ids, "queued_items": items}
    return partial


def as_bus_error(exc: Exception) -> BusError:
    if isinstance(exc, BusError):
        return exc
    return BusError(
        f"the send failed before the broker confirmed it ({type(exc).__name__}: {exc}); "
        "nothing was sent"
    )


def still_in_flight(message: Message, flight: InFlight) -> BusUnavailable:
    return BusUnavailable(
        f"message {message.id}: an earlier send of its dedup key or id "
        f"({flight.id}) is still between admission and the broker's confirm; nothing was "
        "sent, retry",
        component="redis",
    )


def unavailable_at_admission(exc: BusUnavailable, messages: Sequence[Message]) -> BusUnavailable:
    """Redis failed the admission of an LLM agent's send: "nothing was sent, try again"
    only when Redis never got it; when it may have run it (its reply was lost), the ids it
    may have recorded, which bus.outbox then delivers."""
    if not may_have_run(exc):
        return BusUnavailable(f"{exc.message}; nothing was sent, try again")
    ids = [m.id for m in messages]
    return BusUnavailable(
        f"{exc.message}; Redis went away during the send, which it may have recorded as "
        f"{', '.join(ids[:10])}{', ...' if len(ids) > 10 else ''} (then it is delivered): "
        "look at message_status once the bus is back before sending it again (a send again "
        "with the same dedup_key is always safe)",
        ids=ids,
    )
