"""Who may do what, how fast, and the audit trail of it.

- ACL (bus.acl.Policy, optional file, read again when it changes): send/publish/subscribe
  permissions and admins.
- Rate limit: a token bucket per agent in Redis (one Lua call, atomic).
- Audit: a capped Redis stream plus one structured log line per event.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from bus import scripts
from bus.acl import Policy
from bus.admission import RateLimit
from bus.errors import AuthError, BusUnavailable, ConfigError, LimitExceeded, RateLimited
from bus.runtime import Runtime
from bus.schema import Message
from bus.store import AUDIT_MAXLEN

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger("bus.audit")


ACL_RECHECK_SECONDS = 1.0  # how often the ACL file's identity is looked at


def _file_identity(path: Path | None) -> tuple[int, int, int] | None:
    """(inode, mtime_ns, size): any rewrite of the file changes one (an atomic replace
    changes the inode)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# Each value of an audit entry is cut to this many characters: a caller decides a target's
# length (a hundred topics in one subscribe), and the stream is bounded in entries only.
AUDIT_FIELD_CHARS = 160
REFUSALS = frozenset({"denied"})  # outcomes whose floods are sampled in the audit stream


class Guard:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._policy: Policy | None = None
        self._policy_file: tuple[int, int, int] | None = None
        self._policy_checked = float("-inf")

    @property
    def policy(self) -> Policy:
        """The ACL as its file says now: read again when the file changes (looked at once a
        second at most), so that taking an agent's rights away, an admin's included, needs
        no restart. A file that no longer parses keeps the last good policy, loudly."""
        path = self.runtime.settings.acl_file
        if self._policy is not None and (
            path is None or time.monotonic() - self._policy_checked < ACL_RECHECK_SECONDS
        ):
            return self._policy
        self._policy_checked = time.monotonic()
        seen = _file_identity(path)
        if self._policy is None or seen != self._policy_file:
            try:
                self._policy = Policy.load(path, self.runtime.settings.admins)
            except ConfigError as exc:
                if self._policy is None:
                    raise
                logger.error("ACL file changed but cannot be used; keeping the last: %s", exc)
            self._policy_file = seen
        return self._policy

    # -- authorization -------------------------------------------------------------------

    def _deny(self, agent: str, action: str, target: str, rule: str) -> AuthError:
        self.audit(action, agent, target, "denied", rule=rule)
        return AuthError(f"{agent} may not {action} {target}: {rule}", rule=rule)

    def authorize_send(self, message: Message) -> None:
        sender = message.sender
        if message.is_broadcast:
            ok, rule = self.policy.may_broadcast(sender)
            target, action = "*", "broadcast to"
        elif message.to:
            ok, rule = self.policy.may_send(sender, message.to)
            target, action = message.to, "send to"
        else:
            ok, rule = self.policy.may_publish(sender, message.topic or "")
            target, action = f"topic {message.topic}", "publish to"
        if not ok:
            raise self._deny(sender, action, target, rule)
        # A topic label on a direct message or a broadcast reads, to its recipients, as a
        # publication on that topic: it is one, and needs the same right.
        labels = {message.topic, message.metadata.topic} - {None}
        for topic in sorted(t for t in labels if t and message.to):
            ok, rule = self.policy.may_publish(sender, topic)
            if not ok:
                raise self._deny(sender, "label a message with", f"topic {topic}", rule)
        # A reply_to names who the answer goes to: that is sending to it, by proxy (the
        # answering agent would otherwise carry the payload where the sender may not).
        reply_to = message.reply_to
        if reply_to is not None and reply_to != sender:
            ok, rule = self.policy.may_send(sender, reply_to)
            if not ok:
                raise self._deny(sender, "have replies sent to", reply_to, rule)

    def authorize_front_door(self, message: Message) -> None:
        """What an LLM agent (MCP) may not do that trusted code may: have answers sent to
        another agent without the ACL's leave (Policy.may_reply_to)."""
        reply_to, sender = message.reply_to, message.sender
        if reply_to is not None and reply_to != sender:
            ok, rule = self.policy.may_reply_to(sender, reply_to)
            if not ok:
                raise self._deny(sender, "have replies sent to", reply_to, rule)

    def authorize_subscribe(self, agent: str, topic: str) -> None:
        ok, rule = self.policy.may_subscribe(agent, topic)
        if not ok:
            raise self._deny(agent, "subscribe to", f"topic {topic}", rule)

    def is_admin(self, agent: str) -> bool:
        return self.policy.is_admin(agent)

    def require_admin(self, agent: str, action: str) -> None:
        if not self.policy.is_admin(agent):
            raise self._deny(agent, action, "", "admin only (ACL 'admins')")

    def may_read(self, agent: str, owner: str) -> None:
        """An agent reads its own inbox and history; reading another's needs admin."""
        if agent != owner and not self.policy.is_admin(agent):
            raise self._deny(
                agent, "read the messages of", owner, "own inbox only (admins may read any)"
            )

    # -- rate limiting ---------------------------------------------------------------------

    def rate_limit_for(self, agent: str, *, front_door: bool = False) -> RateLimit | None:
        """`agent`'s token bucket (None: no limit). Admission charges it one token per
        recipient of every message, in the same Redis call that admits them. LLM agents
        at the front door (MCP) get MESSAGE_BUS_RATE_LIMIT, trusted code holding the
        secret MESSAGE_BUS_TRUSTED_RATE_LIMIT; the ACL may set either per agent."""
        s = self.runtime.settings
        default = s.rate_per_second if front_door else s.trusted_rate_per_second
        rate = self.policy.rate_for(agent, default)
        if rate <= 0:
            return None
        burst = self.policy.burst_for(agent, self.runtime.settings.rate_burst) or max(
            1, math.ceil(rate)
        )
        return RateLimit(self.runtime.keys.rate(agent), rate, burst)

    def charge(self, agent: str, cost: int, *, front_door: bool) -> None:
        """Takes `cost` tokens from `agent`'s bucket for an action other than a send (one
        Redis call); raises RateLimited, or LimitExceeded when no bucket ever holds that."""
        limit = self.rate_limit_for(agent, front_door=front_door)
        if limit is None or cost <= 0:
            return
        outcome, *details = self.runtime.scripts.call(
            scripts.CHARGE,
            [limit.key],
            [limit.rate, limit.burst, cost],
            action="charge the rate limit",
        )
        if outcome == "rate_limited":
            raise self.throttled(agent, limit, int(details[0]))
        if outcome == "too_costly":
            raise LimitExceeded(
                f"this costs {cost} tokens, more than {agent}'s rate limit ever allows at "
                f"once (burst {limit.burst}); do less at a time",
                limit="rate_burst",
            )

    def throttled(self, agent: str, limit: RateLimit, retry_after_ms: int) -> RateLimited:
        retry_after = retry_after_ms / 1000
        self.audit("rate_limited", agent, "", "denied", retry_after=retry_after)
        return RateLimited(
            f"{agent} is over its rate limit ({limit.rate:g}/s, burst {limit.burst}); "
            f"retry after {retry_after:.3f}s",
            retry_after=retry_after,
        )

    # -- audit -----------------------------------------------------------------------------

    @staticmethod
    def audit_entry(
        action: str, agent: str, target: str, outcome: str, **fields: Any
    ) -> dict[str, str]:
        """Builds an entry and writes its log line (the stream write may ride a pipeline)."""
        entry = {"action": action, "agent": agent, "target": target, "outcome": outcome}
        entry |= {k: str(v) for k, v in fields.items() if v is not None}
        entry = {k: _clipped(v) for k, v in entry.items()}
        audit_logger.info("audit %s", action, extra={"audit": entry})
        return entry

    def audit(self, action: str, agent: str, target: str, outcome: str, **fields: Any) -> None:
        self.store_audits([self.audit_entry(action, agent, target, outcome, **fields)])

    def audit_each(
        self, action: str, agent: str, targets: Iterable[str], outcome: str, **fields: Any
    ) -> None:
        """One entry per target, stored in one round trip."""
        self.store_audits(
            [self.audit_entry(action, agent, target, outcome, **fields) for target in targets]
        )

    def store_audits(self, entries: list[dict[str, str]]) -> None:
        """Writes built entries to the audit stream in one call; refusals are sampled per
        agent and action (scripts.AUDIT), so a flood of them cannot flush the trail. A log
        line says so when Redis is down."""
        if not entries:
            return
        keys = [self.runtime.keys.audit]
        args: list[Any] = [AUDIT_MAXLEN]
        for entry in entries:
            keys.append(self.runtime.keys.audit_burst(entry["agent"], entry["action"]))
            refusal = entry["outcome"] in REFUSALS
            flat = [part for pair in entry.items() for part in pair]
            args += ["1" if refusal else "0", orjson.dumps(flat).decode()]
        try:
            self.runtime.scripts.call(scripts.AUDIT, keys, args, action="write the audit log")
        except BusUnavailable:
            logger.warning(
                "%d audit entries not stored (Redis unavailable): %s", len(entries), entries
            )


def _clipped(value: str) -> str:
    if len(value) <= AUDIT_FIELD_CHARS:
        return value
    cut = AUDIT_FIELD_CHARS - 24
    return f"{value[:cut]}... (+{len(value) - cut} chars)"
