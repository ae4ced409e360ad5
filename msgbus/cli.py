"""The `msgbus` command line: one click group, its commands grouped by noun in
msgbus/commands/ (messages, dead letters, processes, admin, services).

A command's module is imported when the command runs (or when `--help` lists them all):
`msgbus send` does not pay for importing the MCP server, Celery's worker or the cluster
manager (seconds on a small machine, at every call of a script).
"""

from __future__ import annotations

import importlib
from typing import Any

import click
import pydantic

from bus.logs import configure
from bus.settings import Settings
from msgbus.console import reported_errors

COMMANDS = {
    "messages": [
        "send",
        "publish",
        "broadcast",
        "read",
        "ack",
        "history",
        "status",
        "tail",
        "subscribe",
        "unsubscribe",
    ],
    "deadletters": ["dlq"],
    "processes": ["up", "worker", "beat", "flower", "mcp", "dashboard", "agent", "bench"],
    "admin": ["token", "keys", "audit", "agents", "health", "stats"],
    "services": ["services"],
}
_WHERE = {name: module for module, names in COMMANDS.items() for name in names}


class CommandsByNoun(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_WHERE)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _WHERE.get(cmd_name)
        if module is None:
            return None
        with reported_errors():  # a module may build settings on import (Celery's app)
            loaded = importlib.import_module(f"msgbus.commands.{module}")
        command: Any = getattr(loaded, cmd_name)
        return command if isinstance(command, click.Command) else None

    def invoke(self, ctx: click.Context) -> Any:
        with reported_errors():
            return super().invoke(ctx)


@click.group(cls=CommandsByNoun)
@click.option("--log-level", default=None, help="[default: MESSAGE_BUS_LOG_LEVEL, else WARNING]")
def main(log_level: str | None) -> None:
    """agent-message-bus: typed, signed messages between agents."""
    try:
        level = log_level or Settings().log_level
    except pydantic.ValidationError:
        level = "WARNING"  # the command itself reports the bad setting, on one line
    configure(level)


if __name__ == "__main__":
    main()
