"""What every `msgbus` command shares: output, errors, and the handles it acts through.

Errors are one `error: ...` line on stderr and a non-zero exit code (the error's own),
written for every command at the root group;
`--json` prints machine-readable output on every read command. A command acts through the
library's identity-bound handles: as the agent it names (the CLI holds the secret, so it is
trusted code), or as the operator at the console for admin actions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import pydantic

from bus.client import MessageBus
from bus.errors import BusError
from bus.handle import AgentHandle
from bus.jsonvalue import loads_exact
from bus.jsonview import to_json
from bus.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def emit(value: Any, as_json: bool, text: Callable[[Any], str] | None = None) -> None:
    if as_json or text is None:
        click.echo(to_json(value, indent=not as_json))
    else:
        click.echo(text(value))


def json_option(fn: F) -> F:
    """`--json`: the command prints JSON (it takes `as_json`)."""
    return click.option("--json", "as_json", is_flag=True, help="print JSON")(fn)


@contextmanager
def reported_errors() -> Iterator[None]:
    """A bus error, or a bad MESSAGE_BUS_* setting, as one `error: ...` line on stderr and
    its exit code; Ctrl-C as 130. The root group runs every command inside it (msgbus.cli),
    so no command translates errors itself."""
    try:
        yield
    except BusError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except pydantic.ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        click.echo(f"error: {settings_problem(exc)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def settings_problem(exc: pydantic.ValidationError) -> str:
    """A bad MESSAGE_BUS_* variable, named as the user set it."""
    first = exc.errors()[0]
    name = "MESSAGE_BUS_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
    return f"invalid setting {name}: {first['msg'].removeprefix('Value error, ')}"


def settings() -> Settings:
    """The settings of this command (MESSAGE_BUS_* variables: Settings reads them)."""
    return Settings()


def bus() -> MessageBus:
    return MessageBus(settings())


def as_agent(agent: str) -> AgentHandle:
    """The handle of the agent the command acts as."""
    return bus().as_agent(agent)


def operator() -> AgentHandle:
    """The handle of the operator at the console (admin actions, audited as such)."""
    return bus().as_operator()


def json_arg(text: str | None, what: str) -> Any:
    """A JSON argument read exactly (`-` reads stdin)."""
    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    return loads_exact(text, what)
