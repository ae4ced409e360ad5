"""What a model pays to read its mail: characters of MCP tool results and definitions.

Claude Code hands a model a bus tool's result as the compact JSON of its
`structuredContent` (tests/e2e/test_claude_code.py checks that on the real CLI), so that
is what is counted here: `orjson.dumps(structured_content)`, the server in-process, a real
worker delivering. Each view is measured on messages of the same shape (one sender, a
29-character string payload as in the end-to-end size report): the compact view tools
return by default, and the full envelope (`full: true`), which is what every read returned
before the compact view (its messages are unchanged; results gained `unread`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from mcp.client import Client

from bench.harness import Bench, wait_until
from mcp_server.identity import Identity
from mcp_server.server import build_server

PAYLOAD = "please review PR 42 by friday"
SENDER, READER = "bench-alice", "bench-bob"
COUNTS = (1, 50)


def tool_result_sizes(b: Bench) -> dict[str, Any]:
    worker = b.start("workers.app", "bus.critical,bus.high,bus.normal,bus.low", "bus")
    bus = b.bus()
    server, events = build_server(bus.settings, Identity.stdio(READER), "core")
    payload_chars = len(orjson.dumps(PAYLOAD))

    def deliver(n: int) -> None:
        ids = [
            bus.send_message({"from": SENDER, "to": READER, "payload": PAYLOAD}).id
            for _ in range(n)
        ]
        wait_until(
            lambda: all(bus.runtime.store.status(i).get("status") == "delivered" for i in ids),
            60,
            f"{n} deliveries",
        )

    async def measure() -> dict[str, Any]:
        try:
            return await measured()
        finally:
            await events.close()  # in the loop its connections were made in

    async def measured() -> dict[str, Any]:
        out: dict[str, Any] = {"payload_chars": payload_chars}
        async with Client(server) as client:

            async def read(full: bool) -> int:
                result = await client.call_tool(
                    "read_messages", {"limit": 50, "wait_seconds": 0, "full": full}
                )
                content = result.structured_content or {}
                ids = [m["id"] for m in content.get("messages", [])]
                if ids:
                    await client.call_tool("ack_messages", {"ids": ids})
                return len(orjson.dumps(content))

            for view, full in (("compact", False), ("full", True)):
                empty = await read(full)
                sizes = {}
                for n in COUNTS:
                    await asyncio.to_thread(deliver, n)
                    sizes[n] = await read(full)
                out[view] = {
                    "empty": empty,
                    **{f"chars_{n}": sizes[n] for n in COUNTS},
                    **{
                        f"beyond_payload_per_message_{n}": round(
                            (sizes[n] - empty) / n - payload_chars, 1
                        )
                        for n in COUNTS
                    },
                }
            tools = (await client.list_tools()).tools
        definitions = {
            t.name: len(
                orjson.dumps(
                    {
                        "name": f"mcp__bus__{t.name}",
                        "description": t.description,
                        "input_schema": t.input_schema,
                        "defer_loading": True,
                    }
                )
            )
            for t in tools
        }
        out["tool_definitions_chars"] = sum(definitions.values())
        out["tool_definitions"] = definitions
        return out

    try:
        b.started_and_consuming(worker, "bus.normal")
        return asyncio.run(measure())
    finally:
        server.bus.close()
        bus.close()
        b.stop(worker)
