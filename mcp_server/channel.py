"""The Claude Code channel: a doorbell in the session when mail lands in the agent's inbox.

A stdio server that declares `capabilities.experimental["claude/channel"]` may send
`notifications/claude/channel` `{"content": str, "meta": {identifier: str}}`; Claude Code
shows the model `<channel source="<server>" k="v"...>content</channel>` and an idle
session starts a turn by itself. A notification is never acknowledged, so it is only ever a
doorbell: the message stays in the inbox, unread, until the model reads and acks it.

Rules this module keeps:
- debounced: the first arrival waits for `quiet` seconds without another (at most
  `max_delay` after the first), then one notification covers all that arrived, saying how
  many are waiting;
- a notification names only messages not yet pushed in this session, and at least one, so
  there are never more notifications than messages and no message is pushed twice (the
  ids pushed are remembered, up to `remember` of them);
- only what is waiting unread is pushed: a message the model already read (leased) by the
  time the bell would ring is left out, and a bell with nothing new is not rung;
- what the pub/sub listener missed (a Redis reconnect) is found by a sweep every `sweep`
  seconds, and mail already waiting when the session starts rings once at the start.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from bus.client import MessageBus
from bus.errors import BusError
from bus.schema import MessageType, Priority, ReceivedMessage
from mcp_server.push import InboxEvents

logger = logging.getLogger(__name__)

CAPABILITY = "claude/channel"
METHOD = "notifications/claude/channel"
PEEK = 50  # messages looked at per bell (read order); the rest ring on a later bell
PREVIEW_CHARS = 160
_SAFE_META = re.compile(r"^[A-Za-z0-9._:/@-]{1,128}$")

Send = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Bell:
    """One notification: what the model reads, and the ids it covers."""

    content: str
    meta: dict[str, str]
    ids: tuple[str, ...]

    def params(self) -> dict[str, Any]:
        return {"content": self.content, "meta": self.meta}


def preview(message: ReceivedMessage) -> str:
    """The payload as one line of JSON, cut at PREVIEW_CHARS; `<` and `>` escaped so a
    payload cannot close the channel tag it is shown in."""
    if message.decode_error:
        return f"(payload withheld: {message.decode_error})"
    text = orjson.dumps(message.payload).decode()
    if len(text) > PREVIEW_CHARS:
        text = text[: PREVIEW_CHARS - 1] + "…"
    return text.replace("<", "\\u003c").replace(">", "\\u003e")


def describe(message: ReceivedMessage) -> str:
    kind = message.type.value
    if message.metadata.priority is not Priority.normal:
        kind = f"{message.metadata.priority.value} {kind}"
    if message.type is not MessageType.broadcast and message.to is None and message.topic:
        kind = f"{kind} on {message.topic}"
    return f"{kind} from {message.sender}: {preview(message)}"


def ring(new: list[ReceivedMessage], unread: int) -> Bell:
    """The bell for `new` (never pushed before, read order, at least one)."""
    first = new[0]
    if len(new) == 1:
        content = f"New message, {describe(first)}"
    else:
        content = f"{len(new)} new messages; first, {describe(first)}"
    content += f" ({unread} unread: read_messages, then ack_messages)"
    meta = {
        "message_id": first.id,
        "from": first.sender,
        "type": first.type.value,
        "priority": first.metadata.priority.value,
        "new": str(len(new)),
        "unread": str(unread),
    }
    if first.correlation_id and _SAFE_META.fullmatch(first.correlation_id):
        meta["correlation_id"] = first.correlation_id
    return Bell(content, meta, tuple(m.id for m in new))


class Channel:
    """The doorbell of one stdio session, for one agent."""

    def __init__(
        self,
        bus: MessageBus,
        events: InboxEvents,
        agent: str,
        send: Send,
        *,
        quiet: float = 0.25,
        max_delay: float = 1.0,
        sweep: float = 15.0,
        remember: int = 10_000,
    ) -> None:
        self.bus, self.events, self.agent, self.send = bus, events, agent, send
        self.quiet, self.max_delay, self.sweep = quiet, max_delay, sweep
        self.remember = remember
        self.pushed: OrderedDict[str, None] = OrderedDict()
        self.rung = 0
        self._arrived = asyncio.Event()
        events.on_inbox(self._on_inbox)

    def _on_inbox(self, agent: str) -> None:
        if agent == self.agent:
            self._arrived.set()

    async def run(self) -> None:
        """Rings until cancelled (the session ends). A bell that fails is logged and the
        next arrival or sweep tries again: the doorbell never takes the session down."""
        await self.events.start()
        await self._ring_guarded()
        while True:
            if await self._next_arrival(self.sweep):
                await self._settle()
            await self._ring_guarded()

    async def _ring_guarded(self) -> None:
        try:
            await self._ring_if_new()
        except Exception:  # noqa: BLE001 - top of the channel task
            logger.exception("channel: ringing for %s failed", self.agent)

    async def _next_arrival(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return False
        self._arrived.clear()
        return True

    async def _settle(self) -> None:
        """Waits until arrivals pause for `quiet` seconds, or `max_delay` has passed."""
        deadline = asyncio.get_running_loop().time() + self.max_delay
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or not await self._next_arrival(min(self.quiet, left)):
                return

    async def _ring_if_new(self) -> None:
        try:
            bell = await anyio.to_thread.run_sync(self._bell)
        except BusError as exc:  # Redis away: the next arrival or sweep tries again
            logger.warning("channel: cannot look at %s's inbox: %s", self.agent, exc.message)
            return
        if bell is None:
            return
        for message_id in bell.ids:
            self.pushed[message_id] = None
        while len(self.pushed) > self.remember:
            self.pushed.popitem(last=False)
        self.rung += 1
        await self.send(METHOD, bell.params())

    def _bell(self) -> Bell | None:
        """The bell for what is waiting unread and was not pushed yet (runs in a thread)."""
        inbox = self.bus.as_agent(self.agent, front_door=True).inbox(PEEK)
        waiting = [message for message in inbox if message.id not in self.pushed]
        if not waiting:
            return None
        return ring(waiting, max(self.bus.as_agent(self.agent).unread(), len(waiting)))
