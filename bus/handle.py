"""The identity-bound handle: everything one agent may do, each action checked here.

Every entrance (MCP tools and resources, push subscriptions, the dashboard, the CLI) acts
through an `AgentHandle` made for the identity it authenticated (`MessageBus.as_agent`);
who is acting never comes from an argument. The handle applies the ACL (to, topic,
reply_to, broadcast, subscriptions, listen URIs, other agents' inboxes and history,
admin-only actions), charges the rate limit per recipient, audits, and answers a status
only to the message's sender, its recipients and admins.

`front_door` handles (MCP, for LLM agents) get MESSAGE_BUS_RATE_LIMIT by default; trusted
code holding the secret (Python API, CLI, worker agents) MESSAGE_BUS_TRUSTED_RATE_LIMIT.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bus.errors import AuthError, NotFound
from bus.health import Health, Stats
from bus.keyring import ProcessKeys, describe_keys, key_warnings
from bus.keyusage import key_usage
from bus.schema import (
    AckResult,
    AgentInfo,
    DeadLetter,
    MessageStatus,
    Receipt,
    ReceivedMessage,
    Subscription,
    check_agent_id,
)
from bus.store import AUDIT_MAXLEN
from bus.validation import check, whole_number

if TYPE_CHECKING:
    from bus.client import MessageBus

logger = logging.getLogger(__name__)

OPERATOR = "operator"  # who the trusted CLI's admin actions are audited as

INBOX_URI = "message-bus://inbox/"
HISTORY_URI = "message-bus://history/"
AGENTS_URI = "message-bus://agents"
DEAD_LETTERS_URI = "message-bus://dead-letters"


class AgentHandle:
    def __init__(
        self, bus: MessageBus, agent: str, *, front_door: bool = False, operator: bool = False
    ) -> None:
        self.bus = bus
        self.agent = agent if operator else check(agent, check_agent_id, "agent id")
        self.front_door = front_door
        self.operator = operator

    @property
    def is_admin(self) -> bool:
        return self.operator or self.bus.guard.is_admin(self.agent)

    def require_admin(self, action: str) -> None:
        if not self.is_admin:
            self.bus.guard.require_admin(self.agent, action)

    # -- sending ---------------------------------------------------------------------------

    def _own(self, message: dict[str, Any], where: str = "") -> dict[str, Any]:
        given = message.get("from", message.get("sender"))
        if given not in (None, self.agent):
            raise AuthError(
                f"{where}from: {self.agent} may send only as itself, not as {given!r}",
                rule="identity",
            )
        own = {k: v for k, v in message.items() if k not in ("from", "sender")}
        return {**own, "from": self.agent}

    def send(self, message: dict[str, Any]) -> Receipt:
        """A message (direct, topic or broadcast, as its address says) from this agent."""
        return self.bus._send([self._own(message)], front_door=self.front_door)[0]

    def send_batch(self, messages: Sequence[dict[str, Any]]) -> list[Receipt]:
        own = [self._own(m, f"messages[{i}].") for i, m in enumerate(messages)]
        return self.bus._send(own, batch=True, front_door=self.front_door)

    def request(self, message: dict[str, Any], timeout: float = 30.0) -> ReceivedMessage:
        """Sends a request and waits for its response (taken out of this agent's inbox)."""
        data = {"type": "request", "reply_to": self.agent, **self._own(message)}
        return self.bus._request(data, timeout, front_door=self.front_door)

    def start_request(self, message: dict[str, Any]) -> str:
        """Sends a request whose response this agent collects later (`response_to`)."""
        data = {"type": "request", **self._own(message), "reply_to": self.agent}
        receipt = self.bus._send([data], front_door=self.front_door)[0]
        return receipt.duplicate_of or receipt.id  # a retry with a dedup key: the earlier one

    def response_to(self, request_id: str, asked: str | None = None) -> ReceivedMessage | None:
        """The response to this agent's request, taken from its inbox; None while none.
        With `asked` (the agent the request went to), only a response from that agent."""
        response_id = self.bus.runtime.store.reply_for(self.agent, request_id)
        if response_id is None:
            return None
        try:
            taken = self.bus.reader.take(self.agent, response_id, asked)
        except NotFound:
            return None  # taken already, or someone else's mail naming the request
        return self._shown([taken])[0]

    # -- reading ---------------------------------------------------------------------------

    def read(self, limit: int = 10, wait: float = 0.0) -> list[ReceivedMessage]:
        return self._shown(self.bus.read(self.agent, limit=limit, wait=wait))

    def _shown(self, messages: list[ReceivedMessage]) -> list[ReceivedMessage]:
        """Messages as an LLM agent sees them: without their signatures. An HMAC of a known
        body under the bus's secret tests guesses of that secret offline (as the key
        fingerprints withheld from non-admins would), and such an agent cannot check one."""
        if not self.front_door:
            return messages
        return [m.model_copy(update={"signature": None}) for m in messages]

    def ack(self, ids: Iterable[str]) -> AckResult:
        return self.bus.ack(self.agent, ids)

    def unread(self) -> int:
        """Messages a read would hand this agent now (ready, or their lease ran out)."""
        return self.bus.runtime.store.unread(self.agent)

    def history(
        self,
        limit: int = 50,
        since: datetime | float | None = None,
        type: str | None = None,
        of: str | None = None,
    ) -> list[ReceivedMessage]:
        """This agent's history, or another's (`of`, admins only)."""
        owner = self._readable(of)
        return self._shown(self.bus.history(owner, limit=limit, since=since, type=type))

    def inbox(self, limit: int = 100, of: str | None = None) -> list[ReceivedMessage]:
        """What waits in the inbox, in read order, without leasing (admins: any inbox)."""
        owner = self._readable(of)
        store, reader = self.bus.runtime.store, self.bus.reader
        return self._shown([reader.decode(wire) for wire in store.peek_inbox(owner, limit)])

    def _readable(self, of: str | None) -> str:
        owner: str = check(of or self.agent, check_agent_id, "agent id")
        if owner != self.agent and not self.operator:
            self.bus.guard.may_read(self.agent, owner)
        return owner

    def status(self, message_id: str) -> MessageStatus:
        """A message's status, for its sender, its recipients and admins. Anyone else is
        told there is none (as for an id that does not exist: ids are not a capability)."""
        return self.bus.status(message_id, viewer=None if self.is_admin else self.agent)

    # -- subscriptions and agents ------------------------------------------------------------

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        types: Sequence[str] | None = None,
        priorities: Sequence[str] | None = None,
    ) -> list[Subscription]:
        return self.bus.subscribe(
            self.agent, topics, types=types, priorities=priorities, front_door=self.front_door
        )

    def unsubscribe(self, topics: Sequence[str]) -> int:
        return self.bus.unsubscribe(self.agent, topics, front_door=self.front_door)

    def subscriptions(self) -> list[Subscription]:
        return self.bus.subscriptions(self.agent)

    def agents(self) -> list[AgentInfo]:
        """Every agent; inbox depths of other agents only for admins (as in `stats`)."""
        agents = self.bus.agents()
        if not self.is_admin:
            for info in agents:
                if info.id != self.agent:
                    info.inbox_depth = None
        return agents

    def may_listen(self, uri: str) -> bool:
        """authorize_listen's verdict, unaudited (asked again while a stream is open)."""
        own = (f"{INBOX_URI}{self.agent}", f"{HISTORY_URI}{self.agent}")
        return self.is_admin or uri == AGENTS_URI or uri in own

    def authorize_listen(self, uri: str) -> None:
        """May this agent be told of changes to `uri` (push: subscriptions/listen and
        resources/subscribe)? Its own inbox and history, the agents list; admins: any."""
        if self.may_listen(uri):
            return
        own = (f"{INBOX_URI}{self.agent}", f"{HISTORY_URI}{self.agent}")
        self.bus.guard.audit("listen", self.agent, uri, "denied", rule="own inbox only")
        raise AuthError(
            f"{self.agent} may subscribe only to its own inbox and history ({own[0]}, "
            f"{own[1]}); admins may subscribe to any",
            rule="own inbox only",
        )

    # -- dead letters (admins) -------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        self.require_admin("list dead letters")
        return self.bus.dead_letters(limit)

    def dead_letter(self, message_id: str) -> DeadLetter:
        self.require_admin("inspect dead letters")
        return self.bus.dead_letter(message_id)

    def replay_dead_letters(
        self, ids: Sequence[str] | None = None, *, all: bool = False, limit: int | None = None
    ) -> list[str]:
        self.require_admin("replay dead letters")
        return self.bus._settle_dead_letters("replay", ids, all, limit, self.agent)

    def purge_dead_letters(
        self, ids: Sequence[str] | None = None, *, all: bool = False, limit: int | None = None
    ) -> list[str]:
        self.require_admin("purge dead letters")
        return self.bus._settle_dead_letters("purge", ids, all, limit, self.agent)

    def dead_letter_depth(self) -> int:
        self.require_admin("count dead letters")
        return self.bus.dead_letter_queue.depth()

    # -- operations ------------------------------------------------------------------------

    def health(self) -> Health:
        kind = "mcp" if self.front_door else "cli" if self.operator else "client"
        health = self.bus.health(kind=kind)
        if self.is_admin:
            return health
        # The processes' key ids and fingerprints are the operators' (each fingerprint tests
        # guesses of the secret offline), and so are the warnings naming them and the
        # workers' node names (hosts, worker agents): as /readyz, a count is shown.
        warned = [f"{len(health.warnings)} warnings (admins see them)"] if health.warnings else []
        return health.model_copy(update={"processes": [], "warnings": warned, "workers": []})

    def keys_in_use(self) -> tuple[list[ProcessKeys], list[str]]:
        """Which key each running process signs and verifies with (this one first), and
        the warnings that follow from it (admins)."""
        self.require_admin("list the processes' keys")
        runtime = self.bus.runtime
        processes = [describe_keys(runtime.codec, "cli"), *runtime.keyring.live()]
        return processes, key_warnings(processes)

    def key_usage(self) -> dict[str, int]:
        """Key id -> stored messages that still need it (admins; see bus.keyusage)."""
        self.require_admin("count key usage")
        return key_usage(self.bus.runtime)

    def declare_agent(self, agent: str) -> bool:
        """Makes an agent known before it connects (admins): it may then get mail, and is
        reached by broadcasts. True when it was not known yet."""
        self.require_admin("declare agents")
        agent = check(agent, check_agent_id, "agent id")
        added = self.bus.runtime.store.declare_agent(agent)
        self.bus.guard.audit("declare", self.agent, agent, "ok")
        return added

    def audit_trail(
        self, count: int = 20, after: str | None = None, block_ms: int = 0
    ) -> list[tuple[str, dict[str, str]]]:
        """The latest `count` audit entries (admins), oldest first; with `after`, the
        entries after that one, waiting up to `block_ms` for some."""
        self.require_admin("read the audit trail")
        wanted = whole_number(count, "count", 1, AUDIT_MAXLEN)
        return self.bus.runtime.store.audit_entries(wanted, after, block_ms)

    def stats(self) -> Stats:
        """Queue depths and counts; inbox depths of other agents only for admins."""
        stats = self.bus.stats()
        if not self.is_admin:
            stats.inbox_depths = {a: n for a, n in stats.inbox_depths.items() if a == self.agent}
        return stats

    def rates(self) -> dict[str, float]:
        return self.bus.runtime.store.rates()

    def topics(self) -> dict[str, int]:
        return self.bus.topics()
