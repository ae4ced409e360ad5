"""The real Claude Code CLI as agents of the bus: its MCP client runs the bus's stdio server,
a real worker delivers through RabbitMQ and Redis, and only the model is stood in for by a
scripted stub that records everything the model was shown."""

from __future__ import annotations

import json

import pytest

from tests.support import claude_code
from tests.support.anthropic_stub import Exchange, Text, ToolUse, result_text
from tests.support.contract import CORE_TOOLS
from tests.support.paths import ARTIFACTS
from tests.support.sessions import (
    ReadSize,
    bus_tool,
    converse,
    load_tools,
    prompt_chars,
    tool_json,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

PAYLOAD = "please review PR 42 by friday"  # 29 characters, the size report's payload


@pytest.fixture(scope="session")
def claude():
    return claude_code.installed()


def clean(session):
    assert not session.problems(), "\n".join(session.problems())
    return session


def ack_what_was_read(exchange: Exchange) -> ToolUse:
    """Bob's turn after reading: ack the ids the model saw in the read result."""
    read = tool_json(exchange.last_tool_result())
    return ToolUse(bus_tool("ack_messages"), {"ids": [m["id"] for m in read["messages"]]})


def test_alice_in_claude_code_sends_and_bob_in_claude_code_reads_and_acks(
    module_env, bus, agents, claude, tmp_path
):
    alice, bob = agents("alice"), agents("bob")
    payload = {"task": "review", "pr": 42, "note": "from claude code"}
    send = ToolUse(bus_tool("send_message"), {"to": bob, "type": "command", "payload": payload})
    sent = clean(
        converse(
            claude,
            alice,
            module_env.env(),
            [load_tools("send_message"), send, Text("Sent.")],
            tmp_path / "alice",
            ["send_message"],
        )
    )
    receipt = tool_json(sent.result_of(send))
    assert receipt["status"] == "queued"
    wait_for(lambda: bus.status(receipt["id"]).status == "delivered", 30, "delivery to bob")

    read = ToolUse(bus_tool("read_messages"), {"wait_seconds": 5})
    got = clean(
        converse(
            claude,
            bob,
            module_env.env(),
            [load_tools("read_messages", "ack_messages"), read, ack_what_was_read, Text("Done.")],
            tmp_path / "bob",
            ["read_messages", "ack_messages"],
        )
    )
    seen = tool_json(got.result_of(read))
    assert seen["count"] == 1 and seen["unread"] == 0
    (message,) = seen["messages"]
    # The compact view: what bob needs to act, no envelope (no to: it is bob's own inbox).
    assert set(message) == {"id", "from", "type", "time", "payload"}
    assert (message["id"], message["from"], message["type"]) == (receipt["id"], alice, "command")
    assert message["payload"] == payload
    ack_call = got.stub.turns[2].reply[0]
    assert isinstance(ack_call, ToolUse) and ack_call.input == {"ids": [receipt["id"]]}
    assert tool_json(got.result_of(ack_call)) == {"acked": 1, "unread": 0}

    assert bus.status(receipt["id"]).status == "acked"
    depths = {a.id: a.inbox_depth for a in bus.agents()}
    assert depths[bob] == 0
    assert bus.read(bob, limit=10, wait=0) == []


def test_bob_reading_before_anything_was_sent_is_shown_an_empty_inbox(
    module_env, worker, agents, claude, tmp_path
):
    bob = agents("bob")
    read = ToolUse(bus_tool("read_messages"), {"wait_seconds": 0})
    got = clean(
        converse(
            claude,
            bob,
            module_env.env(),
            [load_tools("read_messages"), read, Text("Nothing yet.")],
            tmp_path,
            ["read_messages"],
        )
    )
    assert tool_json(got.result_of(read)) == {"messages": [], "count": 0, "unread": 0}


def test_tool_search_loads_a_deferred_bus_tool_and_the_model_then_sees_its_schema(
    module_env, worker, agents, claude, tmp_path
):
    got = clean(
        converse(
            claude,
            agents("alice"),
            module_env.env(),
            [load_tools("message_status"), Text("Loaded.")],
            tmp_path,
            ["message_status"],
        )
    )
    first, second = got.stub.turns
    assert bus_tool("message_status") not in first.tool_names
    listed = [m for m in first.body["messages"] if "deferred tools" in json.dumps(m)]
    assert listed and bus_tool("message_status") in json.dumps(listed[0])
    search = second.last_tool_result()
    assert search["content"] == [
        {"type": "tool_reference", "tool_name": bus_tool("message_status")}
    ]
    definition = second.tool_definition(bus_tool("message_status"))
    assert definition["defer_loading"] is True
    assert definition["input_schema"]["required"] == ["id"]


def test_a_deferred_bus_tool_called_without_tool_search_is_refused_by_the_stand_in(
    module_env, bus, agents, claude, tmp_path
):
    alice, bob = agents("alice"), agents("bob")
    send = ToolUse(bus_tool("send_message"), {"to": bob, "payload": "too early"})
    got = converse(
        claude,
        alice,
        module_env.env(),
        [send],
        tmp_path,
        ["send_message"],
    )
    assert any("ToolSearch" in problem for problem in got.stub.errors), got.stub.errors
    assert got.run.returncode == 0, got.run.describe()
    assert bus.history(alice, limit=10) == []


def test_size_of_read_results_the_model_sees_is_reported(module_env, bus, agents, claude, tmp_path):
    alice, bob = agents("alice"), agents("bob")
    assert len(PAYLOAD) == 29

    def text_read(count: int, name: str) -> str:
        ids = [
            bus.send_message({"from": alice, "to": bob, "type": "event", "payload": PAYLOAD}).id
            for _ in range(count)
        ]
        wait_for(
            lambda: all(bus.status(i).status == "delivered" for i in ids),
            60,
            f"{count} deliveries",
        )
        read = ToolUse(bus_tool("read_messages"), {"limit": 50, "wait_seconds": 0})
        ack = ack_what_was_read
        script = [load_tools("read_messages", "ack_messages"), read, ack, Text("Done.")]
        if not count:
            script = [load_tools("read_messages"), read, Text("Done.")]
        got = clean(
            converse(
                claude,
                bob,
                module_env.env(),
                script,
                tmp_path / name,
                ["read_messages", "ack_messages"],
            )
        )
        block = got.result_of(read)
        text = result_text(block)
        seen = json.loads(text)
        assert seen["count"] == count
        assert [m["payload"] for m in seen["messages"]] == [PAYLOAD] * count
        # Claude Code shows the model structuredContent as compact JSON (not the text block).
        assert text == json.dumps(seen, separators=(",", ":"), ensure_ascii=False)
        return text

    empty, one, fifty = text_read(0, "empty"), text_read(1, "one"), text_read(50, "fifty")
    sizes = ReadSize(
        payload_chars=len(json.dumps(PAYLOAD)),
        empty=len(empty),
        sizes={1: len(one), 50: len(fifty)},
    )
    print("\n" + sizes.report() + "\none message as the model sees it:\n" + one)
    ARTIFACTS.mkdir(exist_ok=True)
    report = sizes.as_json() | {"one_message_text": one}
    (ARTIFACTS / "claude-code-read-sizes.json").write_text(json.dumps(report, indent=2))
    assert sizes.sizes[50] > 50 * sizes.payload_chars  # the figure is measured, not assumed


def test_size_of_what_the_bus_adds_to_each_prompt_and_of_its_tool_definitions_is_reported(
    module_env, worker, agents, claude, tmp_path
):
    """Measured against the same prompt with no MCP server, in same-length folders so the
    working directory in the prompt does not differ. The server before compact views and
    lean schemas, measured so: 712 characters on every prompt, 6,258 for the 8 loaded
    definitions (send_message alone 1,942)."""
    alice = agents("alice")
    bare = clean(
        converse(
            claude, alice, module_env.env(), [Text("ok")], tmp_path / "run0", [], with_bus=False
        )
    )
    with_bus = clean(
        converse(
            claude,
            alice,
            module_env.env(),
            [load_tools(*CORE_TOOLS), Text("Loaded.")],
            tmp_path / "run1",
            list(CORE_TOOLS),
        )
    )
    every_prompt = prompt_chars(with_bus.stub.turns[0]) - prompt_chars(bare.stub.turns[0])
    loaded = with_bus.stub.turns[1]
    definitions = {
        name: len(json.dumps(loaded.tool_definition(bus_tool(name)), separators=(",", ":")))
        for name in CORE_TOOLS
    }
    total = sum(definitions.values())
    print(
        f"\nthe bus adds {every_prompt} chars to every prompt; the {len(CORE_TOOLS)} core tool "
        f"definitions, once loaded, {total} chars: {definitions}"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "claude-code-definition-sizes.json").write_text(
        json.dumps({"every_prompt": every_prompt, "definitions": definitions, "total": total})
    )
    assert 0 < every_prompt <= 712, every_prompt  # no more than before
    assert total <= 5000, definitions  # 6,258 before
