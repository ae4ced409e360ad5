"""The `msgbus` command line: one click group, its commands grouped by noun in
msgbus/commands/ (messages, dead letters, processes, admin, services)."""

from __future__ import annotations

import click
import pydantic

from bus.logs import configure
from bus.settings import Settings
from msgbus.commands import admin, deadletters, messages, processes, services


@click.group()
@click.option("--log-level", default=None, help="[default: MESSAGE_BUS_LOG_LEVEL, else WARNING]")
def main(log_level: str | None) -> None:
    """agent-message-bus: typed, signed messages between agents."""
    try:
        level = log_level or Settings().log_level
    except pydantic.ValidationError:
        level = "WARNING"  # the command itself reports the bad setting, on one line
    configure(level)


for module in (messages, deadletters, processes, admin, services):
    for command in module.COMMANDS:
        main.add_command(command)

if __name__ == "__main__":
    main()
