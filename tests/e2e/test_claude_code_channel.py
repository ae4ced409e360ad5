"""Opt-in (`pytest -m interactive_channel`): the bus's channel in an interactive Claude Code
session started with `--dangerously-load-development-channels server:bus`.

Where Claude Code's channels feature is enabled for the account (a claude.ai login; the
feature is a remote flag and an org policy), this proves the push itself: a delivery to the
agent starts a turn by itself, and the model is shown `<channel source="bus" ...>` with the
message id. Where it is not (API-key auth, as on the machines these tests run on), Claude
Code says so in its debug log for a server whose capability it has accepted, so the test
proves what can be proved there: the capability is seen, on a handshake-era connection,
and a server without it (the `--modern` stdio, which answers `server/discover`) is turned
away earlier with "did not declare". The push reaching a model cannot be observed there.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support import claude_code
from tests.support.anthropic_stub import AnthropicStub, Text
from tests.support.interactive import TmuxClaude
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.interactive_channel, pytest.mark.timeout(180)]

SKIPPED = 'MCP server "bus": Channel notifications skipped: '
REGISTERED = 'MCP server "bus": Channel notifications registered'
UNAVAILABLE = SKIPPED + "channels feature is not currently available"
UNDECLARED = SKIPPED + "server did not declare claude/channel capability"


@pytest.fixture(scope="module")
def claude():
    return claude_code.installed()


def channel_session(claude, module_env, agent, workdir, *server_flags):
    """The arguments of an interactive session whose bus server is `agent` (with
    `server_flags` added to its command line), and the debug log it will write."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = claude_code.bus_mcp_config(workdir / "mcp.json", agent, module_env.env())
    if server_flags:
        data = json.loads(config.read_text())
        data["mcpServers"]["bus"]["args"] = [*data["mcpServers"]["bus"]["args"], *server_flags]
        config.write_text(json.dumps(data))
    log = workdir / "debug.log"
    args = [
        "--mcp-config",
        str(config),
        "--strict-mcp-config",
        "--dangerously-load-development-channels",
        "server:bus",
        "--debug-file",
        str(log),
    ]
    return args, log


def gate_line(log):
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        if SKIPPED in line or REGISTERED in line:
            return line
    return None


def test_the_channel_capability_is_seen_and_a_push_reaches_the_model_where_enabled(
    module_env, bus, agents, claude, tmp_path
):
    alice, bob = agents("alice"), agents("bob")
    with AnthropicStub.running([Text("Reading my mail.")] * 5) as stub:
        args, log = channel_session(claude, module_env, bob, tmp_path / "bob")
        session = TmuxClaude(claude, args, stub.base_url, tmp_path / "bob")
        try:
            line = wait_for(lambda: gate_line(log), 90, "Claude Code's channel decision")
            print("\n" + line)
            assert '"negotiatedProtocolVersion":"2025-11-25"' in log.read_text()
            if REGISTERED not in line:
                # Channels are off for this account: the capability got past every check
                # of the server's (declared, handshake era) and stopped at the feature.
                assert UNAVAILABLE in line, line
                return
            sent = bus.send_message({"from": alice, "to": bob, "payload": "ping via channel"})
            started = time.monotonic()

            def pushed():
                return any(
                    '<channel source=\\"bus\\"' in json.dumps(e.body)
                    and sent.id in json.dumps(e.body)
                    for e in stub.turns
                )

            wait_for(pushed, 30, "a turn that shows the model the channel block")
            print(f"push reached the model {time.monotonic() - started:.2f}s after the send")
        finally:
            session.close()


def test_a_server_without_the_capability_is_turned_away_before_the_feature_check(
    module_env, worker, agents, claude, tmp_path
):
    with AnthropicStub.running([Text("ok")] * 5) as stub:
        # --modern answers server/discover and declares no channel: the control.
        args, log = channel_session(claude, module_env, agents("carol"), tmp_path, "--modern")
        session = TmuxClaude(claude, args, stub.base_url, tmp_path)
        try:
            line = wait_for(lambda: gate_line(log), 90, "Claude Code's channel decision")
            assert UNDECLARED in line, line
        finally:
            session.close()
