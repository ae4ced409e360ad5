"""The four ways into the bus, each as a sender and a reader of its own: the Python API,
the `msgbus` CLI (a process per command), and MCP tools through the `mcp` client over stdio
or streamable HTTP. A refused send raises `Refusal` with the text the user would see."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bus.errors import BusError, ValidationError
from tests.support.hostile import LoopThread
from tests.support.processes import msgbus
from tests.support.waiting import wait_for

ARGV_LIMIT = 100_000  # a payload longer than this goes to the CLI on stdin (Linux caps one argv string at 128 KiB)
BROADCASTS: set[str] = set()  # every broadcast id sent by any entrance


class Refusal(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Entrance:
    """One way into the bus, as a sender and a reader of its own."""

    name = ""
    batch = True

    def __init__(self, sender: str, reader: str, topic: str) -> None:
        self.sender, self.reader, self.topic = sender, reader, topic
        self.mine: set[str] = set()  # ids sent to this reader (direct, topic, batch)
        self.received: dict[str, list[Any]] = {}  # id -> payloads read (one per read)

    def sent(self, kind: str, message_id: str) -> str:
        (BROADCASTS if kind == "broadcast" else self.mine).add(message_id)
        return message_id

    def send(self, kind: str, payload: Any) -> str:
        raise NotImplementedError

    def send_batch(self, payloads: list[Any]) -> list[str]:
        raise NotImplementedError

    def read_round(self) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def collect(self, wanted: set[str], timeout: float = 90) -> dict[str, list[Any]]:
        def arrived() -> bool:
            for message_id, payload in self.read_round():
                self.received.setdefault(message_id, []).append(payload)
            return wanted <= self.received.keys()

        wait_for(arrived, timeout, f"{len(wanted)} deliveries to {self.reader}", interval=0)
        return self.received


class PythonApi(Entrance):
    name = "python"

    def __init__(self, bus: Any, *args: str) -> None:
        super().__init__(*args)
        self.bus = bus

    def message(self, kind: str, payload: Any) -> dict[str, Any]:
        if kind == "topic":
            return {"from": self.sender, "topic": self.topic, "type": "event", "payload": payload}
        if kind == "broadcast":
            return {"from": self.sender, "to": "*", "payload": payload}
        return {"from": self.sender, "to": self.reader, "type": "command", "payload": payload}

    def send(self, kind: str, payload: Any) -> str:
        try:
            receipt = self.bus.send_message(self.message(kind, payload))
        except BusError as exc:
            assert isinstance(exc, ValidationError), f"{type(exc).__name__}: {exc.message}"
            raise Refusal(exc.message) from exc
        assert receipt.status.value == "queued", receipt
        return self.sent(kind, receipt.id)

    def send_batch(self, payloads: list[Any]) -> list[str]:
        batch = [self.message("topic" if i % 2 else "direct", p) for i, p in enumerate(payloads)]
        try:
            receipts = self.bus.send_batch(batch)
        except BusError as exc:
            assert isinstance(exc, ValidationError), f"{type(exc).__name__}: {exc.message}"
            raise Refusal(exc.message) from exc
        return [self.sent("batch", r.id) for r in receipts]

    def read_round(self) -> list[tuple[str, Any]]:
        messages = self.bus.read(self.reader, limit=50, wait=1)
        if messages:
            self.bus.ack(self.reader, [m.id for m in messages])
        return [(m.id, m.payload) for m in messages]


class Cli(Entrance):
    """`run`: how a `msgbus` command is run (default: `python -m msgbus`; a CliForks' run
    forks each command from a process that has the CLI imported)."""

    name = "cli"
    batch = False  # the CLI has no batch send

    def __init__(self, env: Any, *args: str, run: Callable[..., Any] | None = None) -> None:
        super().__init__(*args)
        self.env = env
        self.run = run or (lambda *argv, stdin=None: msgbus(env, *argv, stdin=stdin))

    def send(self, kind: str, payload: Any) -> str:
        return self.send_text(kind, json.dumps(payload, ensure_ascii=True))

    def send_text(self, kind: str, text: str) -> str:
        command = {
            "direct": ["send", "--from", self.sender, "--to", self.reader],
            "topic": ["publish", self.topic, "--from", self.sender],
            "broadcast": ["broadcast", "--from", self.sender],
        }[kind]
        stdin = None
        if len(text) > ARGV_LIMIT:
            command, stdin = [*command, "--payload", "-"], text
        else:
            command = [*command, f"--payload={text}"]
        out = self.run(*command, "--json", stdin=stdin)
        if out.returncode != 0:
            assert out.stderr.startswith("error: "), out.stderr[-3000:]
            assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
            assert out.returncode == 2, (out.returncode, out.stderr)
            raise Refusal(out.stderr)
        return self.sent(kind, json.loads(out.stdout)["id"])

    def read_round(self) -> list[tuple[str, Any]]:
        out = self.run("read", self.reader, "--json", "--limit", "50", "--wait", "1", "--ack")
        assert out.returncode == 0, out.stderr
        return [(m["id"], m.get("payload")) for m in json.loads(out.stdout)]


class Mcp(Entrance):
    def __init__(self, name: str, loop: LoopThread, sender: Any, reader: Any, *args: str) -> None:
        super().__init__(*args)
        self.name, self.loop = name, loop
        self.sender_client, self.reader_client = sender, reader

    def tool(self, client: Any, tool: str, args: dict[str, Any]) -> Any:
        try:
            result = self.loop.run(client.call_tool(tool, args))
        except Exception as exc:  # noqa: BLE001 - the client failed: say how
            raise Refusal(f"{type(exc).__name__}: {exc}") from exc
        text = result.content[0].text if result.content else ""
        if result.is_error:
            assert "Traceback" not in text, text
            raise Refusal(text)
        return result.structured_content

    def address(self, kind: str) -> dict[str, Any]:
        if kind == "topic":
            return {"topic": self.topic, "type": "event"}
        if kind == "broadcast":
            return {"broadcast": True}
        return {"to": self.reader, "type": "command"}

    def send(self, kind: str, payload: Any) -> str:
        receipt = self.tool(
            self.sender_client, "send_message", {**self.address(kind), "payload": payload}
        )
        assert receipt["status"] == "queued", receipt
        return self.sent(kind, receipt["id"])

    def send_batch(self, payloads: list[Any]) -> list[str]:
        items = [
            {**self.address("topic" if i % 2 else "direct"), "payload": p}
            for i, p in enumerate(payloads)
        ]
        result = self.tool(self.sender_client, "send_batch", {"messages": items})
        return [self.sent("batch", r["id"]) for r in result["receipts"]]

    def read_round(self) -> list[tuple[str, Any]]:
        read = self.tool(self.reader_client, "read_messages", {"limit": 20, "wait_seconds": 1})
        messages = read["messages"]
        if messages:
            self.tool(self.reader_client, "ack_messages", {"ids": [m["id"] for m in messages]})
        return [(m["id"], m.get("payload")) for m in messages]
