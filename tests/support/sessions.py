"""A scripted Claude Code session as one agent of the bus: the stub as its model, the
bus's stdio MCP server as its only MCP server, and what the model was shown afterwards.

Claude Code 2.1 defers MCP tools: the first request names them in a system message only,
and the model loads one with `ToolSearch` `{"query": "select:mcp__bus__send_message"}`
(the tool result is a `tool_reference` block); from the next request on the tool is
offered with `defer_loading: true` and may be called. `load_tools()` is that turn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import claude_code
from tests.support.anthropic_stub import AnthropicStub, Exchange, ToolUse, Turn, result_text

SERVER = "bus"


def bus_tool(name: str) -> str:
    """The name Claude Code gives the bus server's tool `name`."""
    return f"mcp__{SERVER}__{name}"


def load_tools(*names: str) -> ToolUse:
    """The ToolSearch call that loads deferred bus tools, as the model makes it."""
    tools = ",".join(bus_tool(n) for n in names)
    return ToolUse("ToolSearch", {"query": f"select:{tools}", "max_results": len(names)})


def tool_json(block: dict[str, Any]) -> Any:
    """A bus tool's result as the model saw it (Claude Code sends structuredContent as
    compact JSON text), parsed."""
    return json.loads(result_text(block))


@dataclass
class Session:
    agent: str
    stub: AnthropicStub
    run: claude_code.ClaudeRun

    def problems(self) -> list[str]:
        """Why the run is not a clean one: a failed CLI, an error result, a script not used
        up or overrun, or a turn the stub refused."""
        found = list(self.stub.errors)
        if self.run.returncode != 0 or self.run.result.get("is_error", True):
            found.append(self.run.describe())
        if not self.stub.done:
            found.append(f"script used {len(self.stub.turns)} of {len(self.stub.script)} turns")
        if self.stub.overruns:
            found.append(f"{self.stub.overruns} request(s) past the end of the script")
        return found

    def result_of(self, tool_use: ToolUse) -> dict[str, Any]:
        """The tool_result block the model received for one of its scripted calls."""
        for exchange in reversed(self.stub.turns):
            try:
                return exchange.tool_result(tool_use.id)
            except KeyError:
                continue
        raise AssertionError(f"the model never received a result for {tool_use.name}")

    @property
    def last_request(self) -> Exchange:
        return self.stub.turns[-1]


def converse(
    claude: Path,
    agent: str,
    bus_env: Mapping[str, str],
    script: Sequence[Turn],
    workdir: Path,
    allowed: Sequence[str],
    prompt: str = "Check the message bus and do what it needs.",
    with_bus: bool = True,
) -> Session:
    """Runs Claude Code as `agent` with `script` as its model, to the end (`with_bus=False`:
    with no MCP server at all, the baseline of a size comparison)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = claude_code.bus_mcp_config(workdir / "mcp.json", agent, bus_env, SERVER)
    if not with_bus:
        config.write_text('{"mcpServers": {}}')
    with AnthropicStub.running(list(script)) as stub:
        ran = claude_code.run(
            claude,
            prompt,
            base_url=stub.base_url,
            mcp_config=config,
            allowed_tools=[bus_tool(name) for name in allowed],
            workdir=workdir,
        )
    return Session(agent, stub, ran)


@dataclass(frozen=True)
class ReadSize:
    """Characters of read_messages results as the model saw them."""

    payload_chars: int  # the payload as JSON in the message (a string: its quotes too)
    empty: int  # a read that found nothing
    sizes: dict[int, int]  # messages read -> characters of the tool_result text

    def beyond_payload(self, count: int) -> float:
        """Characters per message beyond its payload: (size - empty) / count - payload."""
        return (self.sizes[count] - self.empty) / count - self.payload_chars

    def report(self) -> str:
        lines = [f"read_messages tool_result as the model sees it (empty read: {self.empty} chars)"]
        for count, chars in sorted(self.sizes.items()):
            lines.append(
                f"  {count:>3} message(s): {chars:>6} chars, {chars / count:.1f} per message, "
                f"{self.beyond_payload(count):.1f} beyond a {self.payload_chars}-char payload"
            )
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "payload_chars": self.payload_chars,
            "empty": self.empty,
            "sizes": self.sizes,
            "beyond_payload_per_message": {n: self.beyond_payload(n) for n in self.sizes},
        }


def prompt_chars(exchange: Exchange) -> int:
    """Characters of what a request shows the model: system, messages and tool definitions
    as compact JSON (the envelope fields around them, model name and such, left out)."""
    body = exchange.body
    shown = {k: body.get(k) for k in ("system", "messages", "tools")}
    return len(json.dumps(shown, separators=(",", ":"), ensure_ascii=False))
