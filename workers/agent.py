"""Worker agents: Python code that answers messages, run by `msgbus agent run mod:agent`.

```python
agent = WorkerAgent("summarizer")

@agent.on("request")
def summarize(message):
    return {"summary": message.payload["text"][:100]}
```

A worker agent consumes its own Celery queue ``agent.<name>``: when a message lands in its
inbox the delivery worker also enqueues ``bus.handle`` there. The handler runs with Celery's
retry (exponential backoff and jitter) on any exception; when retries are exhausted the task
is rejected into the dead letters with the error. A handler's return value goes back as a
``response`` (correlation_id = the message id) to ``reply_to`` or the sender, delivered by
the agent's own process inside the handle task (its ``bus.deliver`` task is published only
when that does not go through), so an answer costs no second trip through a worker.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bus.client import MessageBus
from bus.codec import canonical_json
from bus.errors import BusError
from bus.reader import Reader
from bus.schema import MessageType, ReceivedMessage, check_agent_id

logger = logging.getLogger(__name__)

Handler = Callable[[ReceivedMessage], Any]
ANSWERED_TYPES = {MessageType.request, MessageType.command, MessageType.query}


@dataclass(frozen=True)
class _Route:
    type: str | None
    topic: str | None
    handler: Handler


class WorkerAgent:
    def __init__(self, name: str, *, concurrency: int = 2) -> None:
        self.name = check_agent_id(name)
        self.concurrency = concurrency
        self._routes: list[_Route] = []
        self._bus: MessageBus | None = None

    def on(
        self, type: str | None = None, *, topic: str | None = None
    ) -> Callable[[Handler], Handler]:
        """Registers a handler for a message type (and optionally a topic); None = any."""
        if type is not None:
            MessageType(type)  # fails early on a typo

        def register(fn: Handler) -> Handler:
            self._routes.append(_Route(type, topic, fn))
            return fn

        return register

    @property
    def queue(self) -> str:
        return f"agent.{self.name}"

    @property
    def bus(self) -> MessageBus:
        if self._bus is None:
            self._bus = MessageBus()
        return self._bus

    def use_bus(self, bus: MessageBus) -> None:
        self._bus = bus

    def handler_for(self, message: ReceivedMessage) -> Handler | None:
        topic = message.topic or message.metadata.topic
        for route in self._routes:
            if route.type not in (None, message.type.value):
                continue
            if route.topic not in (None, topic):
                continue
            return route.handler
        return None

    @property
    def reader(self) -> Reader:
        return self.bus.reader

    def run(self, message: ReceivedMessage) -> Any:
        """Runs the handler for `message` (None when no handler takes it)."""
        handler = self.handler_for(message)
        if handler is None:
            logger.info("%s has no handler for %s; acked unhandled", self.name, message.type.value)
            return None
        return handler(message)

    def reply(self, message: ReceivedMessage, result: Any) -> None:
        """Sends the handler's result back as a response when there is one. The response's
        id is made from the request's, so a handler run again after an outage answers once."""
        if result is not None and message.type in ANSWERED_TYPES:
            self.bus.send_message(self._answer(message, "response", result))

    def _answer(self, message: ReceivedMessage, kind: str, payload: Any) -> dict[str, Any]:
        """The answer of `kind` to `message`: its id made from the request's and the kind,
        so that a handler run again answers once."""
        return {
            "id": self.answer_id(message.id, kind),
            "from": self.name,
            "to": message.reply_to or message.sender,
            "type": kind,
            "correlation_id": message.id,
            "payload": payload,
            "trace_id": message.trace_id,
            "metadata": {"priority": message.priority.value},
        }

    def answer_id(self, request_id: str, kind: str) -> str:
        """The same id for every run of one answer, and one no other agent can work out
        ahead (keyed by the bus's signing secret): with a public recipe, whoever saw a
        request's id could send a message under its answer's id first, and the real answer
        would be refused as another sender's id."""
        # The last key: a rotation puts the new key first, so this one changes only when the
        # oldest key is retired.
        _, secret = self.bus.settings.signing_keys[-1]
        digest = hmac.new(
            secret, f"response id:{self.name}:{request_id}:{kind}".encode(), hashlib.sha256
        ).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))

    def seal(self, request_id: str, result: Any) -> list[Any]:
        """The handler's result for `request_id` as a retry task keeps it: with a MAC by the
        bus's secret, so that a task someone else published cannot put words in this
        agent's mouth (the task's arguments are not signed)."""
        return [result, self._mac(request_id, result)]

    def unseal(self, request_id: str, kept: list[Any]) -> tuple[bool, Any]:
        """(True, result) when `kept` is what `seal` made for `request_id`."""
        if not isinstance(kept, list) or len(kept) != 2 or not isinstance(kept[1], str):
            return False, None
        result, mac = kept
        return hmac.compare_digest(mac, self._mac(request_id, result)), result

    def _mac(self, request_id: str, result: Any) -> str:
        _, secret = self.bus.settings.signing_keys[-1]
        body = f"kept answer:{self.name}:{request_id}:".encode() + canonical_json(result)
        return hmac.new(secret, body, hashlib.sha256).hexdigest()

    def reply_error(self, message: ReceivedMessage, error: BusError) -> None:
        """Tells the requester, with an `error` response, why its answer cannot come (the
        bus refused the handler's result); best effort: it may be refused too."""
        if message.type not in ANSWERED_TYPES:
            return
        problem = {"error": error.code, "message": error.message[:500]}
        try:
            self.bus.send_message(self._answer(message, "error", problem))
        except BusError as exc:
            logger.warning(
                "%s could not tell %s its reply was refused: %s", self.name, message.sender, exc
            )

    def handle(self, message: ReceivedMessage) -> Any:
        """Runs the handler and sends its result back (both steps of `bus.handle`)."""
        result = self.run(message)
        self.reply(message, result)
        return result


def load_agent(spec: str) -> WorkerAgent:
    """'package.module:attribute' -> the WorkerAgent it names."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{spec!r} is not MODULE:OBJECT (e.g. examples.echo_agent:agent)")
    agent = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(agent, WorkerAgent):
        raise TypeError(f"{spec} is a {type(agent).__name__}, not a WorkerAgent")
    return agent
