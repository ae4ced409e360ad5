"""Fuzzing every MCP tool's input (hypothesis) against the real server object on real Redis
and RabbitMQ: no input crashes it, every refusal is a clear tool error, and a refused send
leaves nothing behind."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.client import Client

from mcp_server.identity import Identity
from mcp_server.server import build_server

pytestmark = pytest.mark.timeout(300)

FUZZED = [
    "send_message",
    "send_batch",
    "subscribe",
    "unsubscribe",
    "ack_messages",
    "get_history",
    "message_status",
    "read_messages",
    "list_subscriptions",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Plausible values (agent ids, enum names) mixed with junk, so both paths get exercised.
plausible = st.sampled_from(
    [
        "bob",
        "alice",
        "tasks/new",
        "high",
        "low",
        "command",
        "event",
        "Bob!",
        "",
        "*",
        "x" * 70,
        "../etc",
        "critical",
    ]
)
arg_values = plausible | json_values | st.lists(plausible, max_size=3)


@pytest.fixture(scope="module")
def server(module_env, worker):
    srv, _ = build_server(module_env.settings(), Identity.stdio("fuzzer"), "full")
    yield srv
    srv.bus.close()


async def _call(srv, tool, args):
    async with Client(srv) as client:
        return await client.call_tool(tool, args)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_tool_input_crashes_the_server_or_leaves_partial_state(server, data):
    tool = data.draw(st.sampled_from(FUZZED), label="tool")
    keys = st.sampled_from(
        [
            "to",
            "topic",
            "payload",
            "type",
            "priority",
            "ttl_seconds",
            "broadcast",
            "ids",
            "topics",
            "types",
            "priorities",
            "limit",
            "wait_seconds",
            "id",
            "messages",
            "since",
            "dedup_key",
            "bogus",
        ]
    )
    args = data.draw(st.dictionaries(keys, arg_values, max_size=5), label="args")
    if "wait_seconds" in args or tool == "read_messages":
        args["wait_seconds"] = 0  # read_messages waits 20 s by default
    store = server.bus.runtime.store
    before = len(store.history("fuzzer", 10_000, None))
    result = asyncio.run(_call(server, tool, args))
    after = len(store.history("fuzzer", 10_000, None))
    if result.is_error:
        text = result.content[0].text
        assert text and "Traceback" not in text and "Internal" not in text, text
        assert after == before, f"refused {tool} still wrote history: {args}"
    else:
        assert result.structured_content is not None
        json.dumps(result.structured_content)
        if tool == "send_message" and result.structured_content["status"] == "queued":
            assert after == before + 1
