"""The Claude Code plugin as its users meet it: `claude plugin validate` on the plugin and the
marketplace, `claude plugin marketplace add` + `install` giving a session the bus with the
configured agent id, `claude --plugin-dir` listing the bus tools, and the channel the
plugin declares. The CLI, its plugin loader and its MCP client are the real ones; only the
model is the scripted stand-in."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.support import claude_code
from tests.support.anthropic_stub import AnthropicStub, Text, ToolUse, result_text
from tests.support.contract import CORE_TOOLS
from tests.support.paths import ARTIFACTS, ROOT
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

PLUGIN_DIR = ROOT / "plugins" / "message-bus"
MARKETPLACE = "agent-message-bus"
PLUGIN = f"message-bus@{MARKETPLACE}"
PREFIX = "mcp__plugin_message-bus_bus__"  # Claude Code's names for a plugin server's tools


@pytest.fixture(scope="module")
def claude():
    return claude_code.installed()


def bus_env(module_env, **extra):
    """What the plugin's server inherits from the session: the bus settings of this test."""
    env = module_env.env(**extra)
    return {k: v for k, v in env.items() if k.startswith("MESSAGE_BUS_") or k == "PYTHONPATH"}


def session(claude, workdir, script, env, allowed, extra_args=()):
    with AnthropicStub.running(list(script)) as stub:
        ran = claude_code.run(
            claude,
            "Check the message bus.",
            base_url=stub.base_url,
            mcp_config=None,
            allowed_tools=[PREFIX + name for name in allowed],
            workdir=workdir,
            extra_args=["--debug-file", str(workdir / "debug.log"), *extra_args],
            extra_env=env,
        )
    problems = list(stub.errors) + ([] if ran.returncode == 0 else [ran.describe()])
    assert not problems and stub.done, "\n".join(problems) or "script not used up"
    return stub, (workdir / "debug.log").read_text(errors="replace")


def load(*names):
    tools = ",".join(PREFIX + n for n in names)
    return ToolUse("ToolSearch", {"query": f"select:{tools}", "max_results": len(names)})


def test_the_plugin_and_its_marketplace_pass_claude_plugin_validate(claude, tmp_path):
    home = tmp_path / "home"
    for target in (PLUGIN_DIR, ROOT / ".claude-plugin" / "marketplace.json"):
        done = claude_code.cli(claude, ["plugin", "validate", str(target)], home, ROOT)
        assert done.returncode == 0 and "Validation passed" in done.stdout, done.stdout
    # Positive control: the same plugin with a misspelt key in its channel entry is refused.
    broken = tmp_path / "broken"
    shutil.copytree(PLUGIN_DIR, broken)
    manifest = broken / ".claude-plugin" / "plugin.json"
    data = json.loads(manifest.read_text())
    data["channels"] = [{"servr": "bus"}]
    manifest.write_text(json.dumps(data))
    done = claude_code.cli(claude, ["plugin", "validate", str(broken)], home, tmp_path)
    assert done.returncode != 0 and "Validation failed" in done.stdout, done.stdout


def test_marketplace_add_and_install_give_a_session_the_bus_as_the_configured_agent(
    module_env, bus, agents, claude, tmp_path
):
    alice, bob = agents("alice"), agents("bob")
    home, work = tmp_path / "home", tmp_path
    steps = [
        ["plugin", "marketplace", "add", str(ROOT)],
        ["plugin", "install", PLUGIN, "--config", f"agent_id={alice}"],
    ]
    for step in steps:
        done = claude_code.cli(claude, step, home, work)
        assert done.returncode == 0, f"claude {' '.join(step)}: {done.stdout}{done.stderr}"
    details = claude_code.cli(claude, ["plugin", "details", PLUGIN], home, work)
    assert details.returncode == 0 and "MCP servers (1)" in details.stdout, details.stdout
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "claude-plugin-details.txt").write_text(details.stdout)
    print("\n" + details.stdout)

    send = ToolUse(PREFIX + "send_message", {"to": bob, "type": "request", "payload": "hi"})
    stub, log = session(
        claude,
        work,
        [load("send_message"), send, Text("Sent.")],
        bus_env(module_env),
        ["send_message"],
    )
    receipt = json.loads(result_text(stub.turns[2].tool_result(send.id)))
    assert receipt["status"] == "queued"
    wait_for(lambda: bus.status(receipt["id"]).status == "delivered", 30, "delivery to bob")
    (got,) = bus.read(bob, limit=10, wait=0)
    assert (got.id, got.sender) == (receipt["id"], alice)  # the identity of the install config
    bus.ack(bob, [got.id])
    assert '"negotiatedProtocolVersion":"2025-11-25"' in log, "not the handshake era"


def test_a_session_started_with_plugin_dir_lists_the_bus_tools_and_reads(
    module_env, worker, agents, claude, tmp_path
):
    read = ToolUse(PREFIX + "read_messages", {"wait_seconds": 0})
    stub, log = session(
        claude,
        tmp_path,
        [load("read_messages"), read, Text("Nothing.")],
        bus_env(module_env, MESSAGE_BUS_AGENT_ID=agents("carol")),  # agent_id left empty
        ["read_messages"],
        extra_args=["--plugin-dir", str(PLUGIN_DIR)],
    )
    listed = set(re.findall(rf"{PREFIX}[a-z_]+", json.dumps(stub.turns[0].body)))
    assert listed == {PREFIX + name for name in CORE_TOOLS}
    assert json.loads(result_text(stub.turns[2].tool_result(read.id))) == {
        "messages": [],
        "count": 0,
        "unread": 0,
    }
    assert '"protocolEra":"legacy"' in log and '"negotiatedProtocolVersion":"2025-11-25"' in log
