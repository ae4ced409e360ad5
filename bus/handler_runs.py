"""A worker agent's handler runs on the messages of its inbox, in Redis
(bus.scripts.handling).

A worker agent's message stays in its inbox until its handler is done with it: there it
counts toward the inbox's cap and its sender's share. One that dies (its handler failed to
the end, crashed its process, or its answer was refused) is buried: taken out of the
inbox, so that failing requests cannot fill the inbox for good, with a marker holding its
digest. A replay of its dead letter consumes the marker and puts the message back, under
the cap and the share like new mail, and only then publishes its handler's task: without
the marker (handled since, purged, past STATUS_RETENTION, or a forged dead letter naming
its id) nothing runs again.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Literal

from bus import scripts
from bus.envelope import Envelope, message_digest, same_message
from bus.errors import BusUnavailable, InboxFull, NothingToReplay
from bus.redis_conn import redis_errors
from bus.store import RedisBacked

logger = logging.getLogger(__name__)

Reopened = Literal["in_inbox", "revived"]

# The status field naming the worker agent whose handler run wrote the status last: a
# fan-out's status is shared, and another agent's run says nothing of this one's.
RUN_OF = "run_of"


class HandlerRuns(RedisBacked):
    def start(self, agent: str, message_id: str, *, redelivered: bool = False) -> int:
        """A handler run starting on a message still in `agent`'s inbox (before the handler
        runs): 1 + the starts of redelivered tasks in this cycle (each one a process that
        died running it); 0 when it is no longer there (handled and acked), -1 when it was
        buried (one round trip)."""
        keys = [
            self.keys.inbox(agent).body,
            self.keys.handling(message_id, agent),
            self.keys.buried(agent, message_id),
        ]
        args = [message_id, self.retention.status_retention, "1" if redelivered else "0"]
        return int(
            self.scripts.call(scripts.START_HANDLING, keys, args, action="count handler runs")
        )

    def bury(self, agent: str, message_id: str, wire: str, reason: str) -> bool:
        """Takes a message that died (`reason`) out of `agent`'s inbox, keeping a marker for
        its replay; only when the inbox holds that very message (`wire` at any try)."""
        inbox = self.keys.inbox(agent)
        with redis_errors("look at the inbox"):
            stored = self.redis.hget(inbox.body, message_id)
        if stored is None or not same_message(stored, wire):
            return False
        keys = [
            inbox.ready,
            inbox.leased,
            inbox.body,
            inbox.meta,
            inbox.senders,
            self.keys.buried(agent, message_id),
            self.keys.unconfirmed,
            self.keys.unconfirmed_wires,
        ]
        args = [
            message_id,
            hashlib.sha1(stored.encode()).hexdigest(),  # noqa: S324 - Redis's sha1hex
            message_digest(stored),
            self.retention.status_retention,
            reason,
        ]
        return bool(self.scripts.call(scripts.BURY, keys, args, action="set a dead message aside"))

    def handled_after_burial(self, agent: str, message_id: str, wire: str) -> bool:
        """A run that answered a message another run of it buried meanwhile (a second
        dispatch beside the first): handled after all, its marker gone, its death void,
        this agent's ack counted (scripts.HANDLED_AFTER_BURIAL)."""
        keys = [
            self.keys.buried(agent, message_id),
            self.keys.status(message_id),
            self.keys.delivered(message_id),
            self.keys.acked(message_id),
        ]
        args = [message_digest(wire), agent, self.retention.status_retention]
        return bool(
            self.scripts.call(
                scripts.HANDLED_AFTER_BURIAL, keys, args, action="record a late answer"
            )
        )

    def death(self, agent: str, message_id: str) -> str | None:
        """Why `agent`'s message died, as its burial recorded (None: not buried, or buried
        before reasons were kept): its own, whatever a fan-out's shared status says."""
        with redis_errors("look at a dead message"):
            marker = self.redis.get(self.keys.buried(agent, message_id))
        _, _, reason = (marker or "").partition("|")
        return reason or None

    def reopen_for_replay(self, agent: str, envelope: Envelope, replays: int) -> Reopened:
        """Readies `agent`'s message for a replay of its dead letter (scripts.REOPEN): a
        new cycle of handler runs, in its inbox again, its status `queued` with `replays`.
        'in_inbox': it never left (died while Redis was away); 'revived': put back.
        NothingToReplay when there is nothing to run, or it runs already; InboxFull
        (retryable) when the inbox or its sender's share has no room. On a refusal nothing
        was written but the marker's new lease."""
        inbox = self.keys.inbox(agent)
        with redis_errors("look at the inbox"):
            stored = self.redis.hget(inbox.body, envelope.id)
        seen = ""
        if stored is not None:
            if not same_message(stored, envelope.text):
                raise NothingToReplay.of(envelope.id, "another message holds its id there")
            seen = hashlib.sha1(stored.encode()).hexdigest()  # noqa: S324 - Redis's sha1hex
        keys = [
            inbox.ready,
            inbox.body,
            inbox.meta,
            inbox.pending,
            inbox.senders,
            self.keys.buried(agent, envelope.id),
            self.keys.handling(envelope.id, agent),
            self.keys.inbox_seq,
            self.keys.status(envelope.id),
            self.keys.readied(agent, envelope.id),
            self.keys.unconfirmed,
            self.keys.unconfirmed_wires,
        ]
        args = [
            envelope.id,
            envelope.text,
            message_digest(envelope.text),
            envelope.priority.rank,
            envelope.sender,
            self.retention.inbox_max,
            self.retention.inbox_share,
            self.retention.status_retention,
            replays,
            seen,
            agent,
        ]
        answer = self.scripts.call(
            scripts.REOPEN, keys, args, action="ready a dead message", confirm="require"
        )
        if isinstance(answer, list):
            what, count = str(answer[0]), int(answer[1])
            room = (
                f"{agent}'s inbox holds {count} messages, its cap"
                if what == "inbox_full"
                else f"{envelope.sender} holds {count} messages of {agent}'s inbox, its share"
            )
            raise InboxFull(
                f"cannot replay {envelope.id} yet: {room}; replay it again once there is room",
                id=envelope.id,
                agent=agent,
            )
        if answer == "stale":
            raise NothingToReplay.of(
                envelope.id,
                f"this letter is older than its replay {self.replays_readied(agent, envelope.id)}",
            )
        if answer == "in_flight":
            raise NothingToReplay.of(envelope.id, "it is being handled (replayed or retrying)")
        if answer == "gone":
            raise NothingToReplay.of(
                envelope.id,
                "its message was handled or purged since, or is older than STATUS_RETENTION",
            )
        return "revived" if answer == "revived" else "in_inbox"

    def replays_readied(self, agent: str, message_id: str) -> int:
        """The replay count last readied for `agent`'s message (0: never replayed): a dead
        letter whose own count is below it is a copy from before that replay."""
        with redis_errors("look at a message's replays"):
            return int(self.redis.get(self.keys.readied(agent, message_id)) or 0)

    def unready(self, agent: str, message_id: str, replays: int) -> None:
        """A readied replay that was not published after all: its letter may ready it
        again (best effort; the replay that failed is raising already)."""
        key = self.keys.readied(agent, message_id)
        try:
            with redis_errors("take back a replay"):
                if self.redis.get(key) == str(replays):
                    self.redis.set(key, replays - 1, ex=self.retention.status_retention)
        except BusUnavailable:
            logger.warning("replay %d of %s stays counted for %s", replays, message_id, agent)

    def forget_buried(self, agent: str, message_id: str, wire: str) -> bool:
        """A purged dead letter's marker goes with it (only that message's)."""
        keys = [self.keys.buried(agent, message_id)]
        return bool(
            self.scripts.call(
                scripts.FORGET_BURIED, keys, [message_digest(wire)], action="forget a dead message"
            )
        )
