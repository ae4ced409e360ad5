"""A scripted stand-in for the Anthropic Messages API, for driving the real Claude Code CLI.

The model is the only thing stood in for: Claude Code, its MCP client and the MCP server
it runs are the real ones. The stub serves `POST /v1/messages` (streaming SSE and plain
JSON), `POST /v1/messages/count_tokens` and `GET /v1/models` on 127.0.0.1 (a free port),
and records every request it receives, body and all, so a test can assert on exactly what
the model was shown.

A script is a list of turns. Each turn answers one agent-loop request (a request that
offers tools) and is a `Text`, a `ToolUse`, a list of them, or a function of the recorded
request returning one of those (so a turn can use an id the model saw in a tool result).
Requests that offer no tools (side requests such as titles) are answered "ok" and do not
consume the script. Past the end of the script the stub answers a text saying so and
counts an overrun: a test asserts `stub.overruns == 0`.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

MODEL = "claude-stub-1"


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolUse:
    name: str
    input: dict[str, Any]
    id: str = field(default_factory=lambda: f"toolu_stub{uuid.uuid4().hex[:20]}")


Block = Text | ToolUse
Reply = Block | list[Block]
Turn = Reply | Callable[["Exchange"], Reply]


@dataclass
class Exchange:
    """One request the stub received, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    reply: list[Block] = field(default_factory=list)
    turn: int | None = None  # index in the script, None for side requests

    @property
    def tool_names(self) -> list[str]:
        return [t.get("name", "") for t in self.body.get("tools", [])]

    def tool_definition(self, name: str) -> dict[str, Any]:
        for tool in self.body.get("tools", []):
            if tool.get("name") == name:
                return dict(tool)
        raise KeyError(f"no tool {name!r} offered; offered: {self.tool_names}")

    def callable_tools(self) -> set[str]:
        """Tools the model may call in its answer: those offered, less deferred ones that no
        ToolSearch result (a `tool_reference`) has loaded yet, as the real API enforces."""
        referenced = {
            part.get("tool_name")
            for block in self.tool_results()
            if isinstance(block.get("content"), list)
            for part in block["content"]
            if isinstance(part, dict) and part.get("type") == "tool_reference"
        }
        return {
            str(tool.get("name"))
            for tool in self.body.get("tools", [])
            if not tool.get("defer_loading") or tool.get("name") in referenced
        }

    def tool_results(self) -> list[dict[str, Any]]:
        """Every tool_result block in the conversation, oldest first."""
        return [
            block
            for message in self.body.get("messages", [])
            if message.get("role") == "user" and isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]

    def tool_result(self, tool_use_id: str) -> dict[str, Any]:
        for block in self.tool_results():
            if block.get("tool_use_id") == tool_use_id:
                return block
        seen = [b.get("tool_use_id") for b in self.tool_results()]
        raise KeyError(f"no tool_result for {tool_use_id}; seen: {seen}")

    def last_tool_result(self) -> dict[str, Any]:
        results = self.tool_results()
        if not results:
            raise KeyError("no tool_result in this request")
        return results[-1]


def result_text(block: dict[str, Any]) -> str:
    """The text a tool_result block carries (content is a string or a list of blocks)."""
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "")
        for part in content
        if isinstance(part, dict) and part.get("type") == "text"
    )


class AnthropicStub:
    """The scripted model: `with AnthropicStub.running(script) as stub: stub.base_url`."""

    def __init__(self, script: list[Turn]) -> None:
        self.script = list(script)
        self.exchanges: list[Exchange] = []
        self.overruns = 0
        self.errors: list[str] = []
        self._next = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @classmethod
    @contextmanager
    def running(cls, script: list[Turn]) -> Iterator[AnthropicStub]:
        stub = cls(script)
        stub.start()
        try:
            yield stub
        finally:
            stub.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "stub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="anthropic-stub", daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def turns(self) -> list[Exchange]:
        """The agent-loop requests, in order (one per scripted turn answered)."""
        with self._lock:
            return [e for e in self.exchanges if e.turn is not None]

    @property
    def done(self) -> bool:
        """Every scripted turn was answered."""
        with self._lock:
            return self._next >= len(self.script)

    def answer(self, exchange: Exchange) -> list[Block]:
        """Records the request and picks its reply (called by the HTTP handler)."""
        with self._lock:
            self.exchanges.append(exchange)
            if not exchange.body.get("tools"):
                return [Text("ok")]
            if self._next >= len(self.script):
                self.overruns += 1
                return [Text("(the stub's script has ended)")]
            exchange.turn = self._next
            turn = self.script[self._next]
            self._next += 1
        try:
            reply = turn(exchange) if callable(turn) else turn
        except Exception as exc:  # a failing turn is reported to the test, not the CLI
            logger.exception("scripted turn %s failed", exchange.turn)
            self.errors.append(f"turn {exchange.turn}: {exc!r}")
            reply = Text(f"(the stub's turn {exchange.turn} failed: {exc!r})")
        blocks = reply if isinstance(reply, list) else [reply]
        allowed = exchange.callable_tools()
        for block in blocks:
            if isinstance(block, ToolUse) and block.name not in allowed:
                problem = (
                    f"turn {exchange.turn} calls {block.name}, which this request does not "
                    "offer (a deferred tool must be loaded with ToolSearch first)"
                )
                self.errors.append(problem)
                blocks = [Text(f"(the stub refused: {problem})")]
                break
        exchange.reply = blocks
        return blocks


def message_json(blocks: list[Block], model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, Text):
            content.append({"type": "text", "text": block.text})
        else:
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
    uses_tool = any(isinstance(b, ToolUse) for b in blocks)
    return {
        "id": f"msg_stub{uuid.uuid4().hex[:20]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if uses_tool else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }


def sse_events(message: dict[str, Any]) -> bytes:
    """The message as the streaming API sends it: start, one delta per block, stop."""
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": message | {"content": [], "stop_reason": None},
            },
        )
    ]
    for index, block in enumerate(message["content"]):
        start: dict[str, Any]
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": 1},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


def _handler_for(stub: AnthropicStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDK expects

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("stub: " + format, *args)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            self._record({})
            if path == "/v1/models":
                model = {
                    "type": "model",
                    "id": MODEL,
                    "display_name": "Stub",
                    "created_at": "2026-01-01T00:00:00Z",
                }
                self._send(
                    200, {"data": [model], "has_more": False, "first_id": MODEL, "last_id": MODEL}
                )
            else:
                self._not_found(path)

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {"_unparsed": raw.decode(errors="replace")}
            if path == "/v1/messages/count_tokens":
                self._record(body)
                self._send(200, {"input_tokens": max(1, len(raw) // 4)})
            elif path == "/v1/messages":
                exchange = Exchange("POST", self.path, dict(self.headers), body)
                message = message_json(stub.answer(exchange), str(body.get("model") or MODEL))
                if body.get("stream"):
                    self._send_bytes(200, "text/event-stream", sse_events(message))
                else:
                    self._send(200, message)
            else:
                self._record(body)
                self._not_found(path)

        def _record(self, body: dict[str, Any]) -> None:
            with stub._lock:
                stub.exchanges.append(Exchange(self.command, self.path, dict(self.headers), body))

        def _not_found(self, path: str) -> None:
            error = {"type": "not_found_error", "message": f"the stub has no {path}"}
            self._send(404, {"type": "error", "error": error})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            self._send_bytes(status, "application/json", json.dumps(body).encode())

        def _send_bytes(self, status: int, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", f"req_stub{uuid.uuid4().hex[:16]}")
            self.end_headers()
            self.wfile.write(data)

    return Handler
