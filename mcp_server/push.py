"""Inbox events from Redis, shared by every waiting call and push subscription in a process.

One Redis pub/sub connection per server process pattern-subscribes to the inbox and reply
channels the workers publish on (and to the channel other MCP server processes publish
their events on). From it:
- `watching_inbox` / `wait_inbox` / `watching_reply` wake long-polls without a thread per
  waiting client;
- `RedisSubscriptionBus` feeds `subscriptions/listen` streams (2026-07-28) across processes;
- `LegacySubscriptions` sends `notifications/resources/updated` to `resources/subscribe`rs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import Counter, OrderedDict, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)

from bus.errors import LimitExceeded
from bus.keys import Keys
from bus.redis_conn import connect_async

# wait(timeout): True if woken since the last wait, False when the timeout passed.
Waiting = Callable[[float], Awaitable[bool]]

logger = logging.getLogger(__name__)

INBOX_URI = "message-bus://inbox/{agent}"
# How long a call that needs events (a subscribe, a listen, a long-poll) waits for the
# listener to be subscribed before it goes on without it (it then warns: pushes from the
# meantime come as one catch-up notice when the listener is up).
START_TIMEOUT = 15.0
# resources/subscribe: resources one session may watch at once (an admin may watch any
# inbox; every subscription is kept in memory and told at each reconnect).
SUBSCRIPTIONS_PER_SESSION = 256
SUBSCRIPTIONS_PER_AGENT = 1024  # over all of one agent's sessions
_EVENT_TYPES = {
    "resource_updated": ResourceUpdated,
    "resources_list_changed": ResourcesListChanged,
    "tools_list_changed": ToolsListChanged,
    "prompts_list_changed": PromptsListChanged,
}


def inbox_uri(agent: str) -> str:
    return INBOX_URI.format(agent=agent)


class InboxEvents:
    """The process-wide listener; started on first use inside the running event loop."""

    def __init__(self, redis_url: str, keys: Keys) -> None:
        self.redis_url = redis_url
        self.keys = keys
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._listeners: dict[object, Callable[[ServerEvent], None]] = {}
        self._on_inbox: list[Callable[[str], Any]] = []
        self._on_connect: list[Callable[[], Any]] = []
        self._listened: Counter[str] = Counter()  # resource URIs open listen streams watch
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._client: aioredis.Redis | None = None

    @property
    def mcp_channel(self) -> str:
        return f"{self.keys.prefix}events:mcp"

    @property
    def client_name(self) -> str:
        """The listener's name in Redis's CLIENT LIST (one per listener and process)."""
        return f"msgbus-mcp-events-{os.getpid()}-{id(self):x}"

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            # The bus's URL forms, Sentinel's included (a failover is a lost connection to
            # the listener, which reconnects to the new primary).
            self._client = connect_async(self.redis_url, client_name=self.client_name)
        return self._client

    async def start(self) -> None:
        """Returns once the listener is subscribed (or has found Redis down): what is
        delivered from then on wakes and pushes."""
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.wait_for(self._ready.wait(), START_TIMEOUT)
        except TimeoutError:
            logger.warning(
                "inbox event listener not subscribed after %.0fs; going on without it "
                "(a catch-up notice follows once it is)",
                START_TIMEOUT,
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        delay = 0.2
        inbox_prefix = f"{self.keys.prefix}events:inbox:"
        reply_prefix = f"{self.keys.prefix}events:reply:"
        while True:
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                await pubsub.psubscribe(f"{inbox_prefix}*", f"{reply_prefix}*")
                await pubsub.subscribe(self.mcp_channel)
                self._ready.set()
                delay = 0.2
                # Wake and tell everyone once after a (re)connect: what arrived meanwhile
                # is in Redis, and its push went to no one.
                self._wake_all()
                self._caught_up()
                async for item in pubsub.listen():
                    channel = item.get("channel", "")
                    if channel.startswith(inbox_prefix):
                        self._inbox(channel[len(inbox_prefix) :])
                    elif channel.startswith(reply_prefix):
                        self._wake(f"reply:{channel[len(reply_prefix) :]}")
                    elif channel == self.mcp_channel:
                        self._remote_event(item.get("data", ""))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening across Redis outages
                self._ready.set()  # waiters fall back to their timeouts
                logger.warning(
                    "inbox event listener lost Redis (%s); retrying in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _wake(self, key: str) -> None:
        for event in self._waiters.get(key, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    def _caught_up(self) -> None:
        for uri in list(self._listened):
            self._dispatch(ResourceUpdated(uri=uri))
        for callback in self._on_connect:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one bad callback must not stop the listener
                logger.exception("inbox event catch-up raised")

    def _inbox(self, agent: str) -> None:
        self._wake(f"inbox:{agent}")
        self._dispatch(ResourceUpdated(uri=inbox_uri(agent)))
        for callback in self._on_inbox:
            callback(agent)

    def _dispatch(self, event: ServerEvent) -> None:
        for listener in list(self._listeners.values()):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - one bad listener must not starve the rest
                logger.exception("subscription listener raised")

    def _remote_event(self, data: str) -> None:
        try:
            raw = json.loads(data)
            cls = _EVENT_TYPES[raw.pop("kind")]
            self._dispatch(cls(**raw))
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored malformed MCP event on %s", self.mcp_channel)

    def watching_inbox(self, agent: str) -> contextlib.AbstractAsyncContextManager[Waiting]:
        """Wake-ups of `agent`'s inbox, registered from the start of the block to its end:
        the yielded `wait(timeout)` returns True at once if an event came since the last
        wait (or since the block began), so a long-poll that looks inside the block misses
        no delivery between a look and its wait."""
        return self._watching(f"inbox:{agent}")

    def watching_reply(
        self, agent: str, correlation_id: str
    ) -> contextlib.AbstractAsyncContextManager[Waiting]:
        """`watching_inbox` for the answer to `agent`'s request: enter it before the
        request is sent, so no answer slips by."""
        return self._watching(f"reply:{agent}:{correlation_id}")

    @contextlib.asynccontextmanager
    async def _watching(self, key: str) -> AsyncIterator[Waiting]:
        await self.start()
        event = asyncio.Event()
        self._waiters[key].add(event)

        async def wait(timeout: float) -> bool:
            try:
                await asyncio.wait_for(event.wait(), timeout)
                return True
            except TimeoutError:
                return False
            finally:
                event.clear()  # after the wake, never before: one between a look and
                # its wait must still end that wait

        try:
            yield wait
        finally:
            self._waiters[key].discard(event)
            if not self._waiters[key]:
                del self._waiters[key]

    async def wait_inbox(self, agent: str, timeout: float) -> bool:
        async with self.watching_inbox(agent) as wait:
            return await wait(timeout)

    def waiting_on_inbox(self, agent: str) -> int:
        """How many waits on `agent`'s inbox are registered (and will be woken)."""
        return len(self._waiters.get(f"inbox:{agent}", ()))

    def on_inbox(self, callback: Callable[[str], Any]) -> None:
        self._on_inbox.append(callback)

    def on_connect(self, callback: Callable[[], Any]) -> None:
        """`callback()` each time the listener has (re)subscribed."""
        self._on_connect.append(callback)

    @contextlib.contextmanager
    def listening(self, uris: list[str]) -> Iterator[None]:
        """Marks `uris` as watched by a listen stream for the block: after a reconnect of
        the listener each hears one catch-up `resource_updated`."""
        self._listened.update(uris)
        try:
            yield
        finally:
            self._listened.subtract(uris)
            for uri in uris:
                if self._listened[uri] <= 0:
                    del self._listened[uri]

    # -- SubscriptionBus seam ------------------------------------------------------------

    def add_listener(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        token = object()
        self._listeners[token] = listener
        with contextlib.suppress(RuntimeError):  # no running loop: started on first use
            asyncio.get_running_loop().create_task(self.start())

        def remove() -> None:
            self._listeners.pop(token, None)

        return remove

    async def publish_event(self, event: ServerEvent) -> None:
        kind = {v: k for k, v in _EVENT_TYPES.items()}[type(event)]
        body = {"kind": kind} | ({"uri": event.uri} if isinstance(event, ResourceUpdated) else {})
        await self.client.publish(self.mcp_channel, json.dumps(body))


class RedisSubscriptionBus:
    """`mcp.server.subscriptions.SubscriptionBus` over Redis pub/sub: events published by
    any server process (and inbox deliveries by any worker) reach every process's streams."""

    def __init__(self, events: InboxEvents) -> None:
        self.events = events

    async def publish(self, event: ServerEvent) -> None:
        await self.events.publish_event(event)

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        return self.events.add_listener(listener)


class LegacySubscriptions:
    """`resources/subscribe` sessions (protocols before 2026-07-28), per resource URI."""

    def __init__(self, events: InboxEvents) -> None:
        # uri -> session -> whether the subscriber's credentials still hold
        self._sessions: dict[str, dict[Any, Callable[[], bool]]] = defaultdict(dict)
        # agent -> its (uri, session) subscriptions, oldest first: the SDK tells no one when
        # a session ends, so a session gone without unsubscribing is found only when a push
        # to it fails; the bound per agent keeps that from growing without end.
        self._by_agent: dict[str, OrderedDict[tuple[str, Any], None]] = defaultdict(OrderedDict)
        self._agent_of: dict[tuple[str, Any], str] = {}
        events.on_inbox(self._inbox)
        # A delivery while the listener was down or not yet subscribed was pushed to no
        # one: every subscriber hears once that its inbox may have changed.
        events.on_connect(self._everyone)

    def add(self, uri: str, session: Any, allowed: Callable[[], bool], agent: str) -> None:
        """Raises LimitExceeded past SUBSCRIPTIONS_PER_SESSION resources for one session;
        past SUBSCRIPTIONS_PER_AGENT for one agent (over all its sessions) its oldest
        subscription goes (most likely one of a session that ended)."""
        held = sum(1 for sessions in self._sessions.values() if session in sessions)
        if session not in self._sessions.get(uri, {}) and held >= SUBSCRIPTIONS_PER_SESSION:
            raise LimitExceeded(
                f"this session is subscribed to {held} resources, the most one session may "
                f"({SUBSCRIPTIONS_PER_SESSION}); unsubscribe from one first",
                limit="subscriptions_per_session",
            )
        key = (uri, session)
        earlier = self._agent_of.get(key)
        if earlier is not None and earlier != agent:  # the session's caller changed
            self._forget_owner(key)
        mine = self._by_agent[agent]
        mine[key] = None
        mine.move_to_end(key)
        self._agent_of[key] = agent
        self._sessions[uri][session] = allowed
        while len(mine) > SUBSCRIPTIONS_PER_AGENT:
            self.remove(*next(iter(mine)))  # its oldest (each pass takes one out of `mine`)

    def remove(self, uri: str, session: Any) -> None:
        sessions = self._sessions.get(uri)
        if sessions is not None:
            sessions.pop(session, None)
            if not sessions:  # a resource nobody watches is forgotten
                del self._sessions[uri]
        self._forget_owner((uri, session))

    def _forget_owner(self, key: tuple[str, Any]) -> None:
        agent = self._agent_of.pop(key, None)
        if agent is not None:
            self._by_agent[agent].pop(key, None)
            if not self._by_agent[agent]:
                del self._by_agent[agent]

    def uris(self) -> list[str]:
        """The resources some session is subscribed to."""
        return list(self._sessions)

    def _everyone(self) -> None:
        for uri in self.uris():
            self._notify_all(uri)

    def _inbox(self, agent: str) -> None:
        self._notify_all(inbox_uri(agent))

    def _notify_all(self, uri: str) -> None:
        for session, allowed in list(self._sessions.get(uri, {}).items()):
            if not allowed():  # its token was revoked: no more news of that inbox
                self.remove(uri, session)
                continue
            asyncio.get_running_loop().create_task(self._notify(uri, session))

    async def _notify(self, uri: str, session: Any) -> None:
        try:
            await session.send_resource_updated(uri)
        except Exception:  # noqa: BLE001 - a closed session unsubscribes itself
            self.remove(uri, session)
