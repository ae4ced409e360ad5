"""Sending, reading and subscribing: `msgbus send|publish|broadcast|read|ack|history|status|
tail|subscribe|unsubscribe`. The send options are generated from bus.options.SendOptions (the
MCP tools take the same fields)."""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from typing import Any

import click
import orjson

from bus import options
from bus.errors import ValidationError
from bus.options import SendOptions, parse_options
from msgbus.console import F, as_agent, emit, json_arg, json_option, operator


def _send_options(*names: str) -> Callable[[F], F]:
    """`--from`, `--json` and the send options `names`, generated from
    bus.options.SendOptions (the MCP tools take the same fields)."""

    def decorate(fn: F) -> F:
        decls = [
            click.option("--from", "sender", required=True, help="sender agent id"),
            *(_option(name) for name in names),
            json_option,
        ]
        for option in reversed(decls):
            fn = option(fn)
        return fn

    return decorate


def _option(name: str) -> Callable[[F], F]:
    info = SendOptions.model_fields[name]
    hint = options.annotation(name, required=True)
    flags = ["--" + name.replace("_", "-")] + (["--ttl"] if name == "ttl_seconds" else [])
    help_text = info.description or ""
    if name == "payload":
        return click.option(*flags, name, default=None, help="JSON payload ('-' reads stdin)")
    if hint is bool:
        return click.option(*flags, name, is_flag=True, default=None, help=help_text)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        # Validated by SendOptions, so a wrong value is the bus's one-line error.
        choices = "|".join(member.value for member in hint)
        return click.option(*flags, name, default=None, help=f"{choices}")
    kind = hint if hint in (int, float) else str
    return click.option(*flags, name, type=kind, default=None, help=help_text)


def _build(sender: str, **given: Any) -> dict[str, Any]:
    """The message the command's options describe (SendOptions' fields)."""
    if given.get("payload") is not None:
        given["payload"] = json_arg(given["payload"], "--payload")
    return parse_options(given).message(sender)


def _receipt_text(r: Any) -> str:
    extra = f" (duplicate of {r.duplicate_of})" if r.duplicate_of else ""
    return f"{r.status.value} {r.id} on {r.queue}{extra}"


@click.command()
@click.option("--message", "raw", default=None, help="a whole message as JSON ('-' for stdin)")
@_send_options("to", *options.CLI_SEND)
def send(sender: str, raw: str | None, as_json: bool, **given: Any) -> None:
    """Send a message to an agent (or a topic): a `command` unless --type says otherwise
    (`publish` sends events)."""
    if raw is not None:
        message = json_arg(raw, "--message")
        if not isinstance(message, dict):
            raise ValidationError("--message must be a JSON object")
    else:
        message = _build(sender, **{**given, "type": given["type"] or "command"})
    emit(as_agent(sender).send(message), as_json, _receipt_text)


@click.command()
@click.argument("topic")
@_send_options(*(name for name in options.CLI_SEND if name != "topic"))
def publish(sender: str, topic: str, as_json: bool, **given: Any) -> None:
    """Publish to a topic's subscribers."""
    message = _build(sender, topic=topic, **given)
    emit(as_agent(sender).send(message), as_json, _receipt_text)


@click.command()
@_send_options(*(name for name in options.CLI_SEND if name not in ("topic", "type")))
def broadcast(sender: str, as_json: bool, **given: Any) -> None:
    """Send to every registered agent but the sender."""
    message = _build(sender, broadcast=True, **given)
    emit(as_agent(sender).send(message), as_json, _receipt_text)


# -- reading -----------------------------------------------------------------------------


def _message_text(m: Any) -> str:
    head = f"[{m.metadata.priority.value}] {m.id} {m.type.value} from {m.sender}"
    return f"{head}: {orjson.dumps(m.payload).decode()}"


@click.command()
@click.argument("agent")
@click.option("--limit", default=10, show_default=True)
@click.option("--wait", type=float, default=0.0, help="long-poll up to S seconds")
@click.option("--ack", "do_ack", is_flag=True, help="ack what was read")
@json_option
def read(agent: str, limit: int, wait: float, do_ack: bool, as_json: bool) -> None:
    """Read (lease) messages from AGENT's inbox."""
    me = as_agent(agent)
    messages = me.read(limit=limit, wait=wait)
    if do_ack and messages:
        me.ack([m.id for m in messages])
    emit(messages, as_json, lambda ms: "\n".join(_message_text(m) for m in ms) or "(no messages)")


@click.command()
@click.argument("agent")
@click.argument("ids", nargs=-1, required=True)
@json_option
def ack(agent: str, ids: tuple[str, ...], as_json: bool) -> None:
    """Acknowledge messages AGENT has read."""
    result = as_agent(agent).ack(list(ids))
    emit(
        result,
        as_json,
        lambda r: (
            f"acked {len(r.acked)}"
            + (f"; not in inbox: {', '.join(r.not_found)}" if r.not_found else "")
        ),
    )
    if result.not_found and not result.acked:
        sys.exit(5)


@click.command()
@click.argument("agent")
@click.option("--limit", default=50, show_default=True)
@click.option("--since", type=float, default=None, help="unix time (seconds)")
@click.option("--type", "type_", default=None)
@json_option
def history(agent: str, limit: int, since: float | None, type_: str | None, as_json: bool) -> None:
    """AGENT's history, newest first."""
    messages = as_agent(agent).history(limit=limit, since=since, type=type_)
    emit(messages, as_json, lambda ms: "\n".join(_message_text(m) for m in ms) or "(empty)")


@click.command()
@click.argument("message_id")
@json_option
def status(message_id: str, as_json: bool) -> None:
    """Delivery status of a message."""
    st = operator().status(message_id)
    emit(
        st,
        as_json,
        lambda s: (
            f"{s.status.value} attempts={s.attempts}"
            + (f" reason={s.reason}" if s.reason else "")
            + (f" error={s.error}" if s.error else "")
        ),
    )


@click.command()
@click.argument("agent")
@json_option
def tail(agent: str, as_json: bool) -> None:
    """Follow AGENT's inbox live (reads and acks as messages arrive; Ctrl-C stops)."""
    me = as_agent(agent)
    while True:
        messages = me.read(limit=100, wait=30)
        for m in messages:
            emit(m, as_json, _message_text)
        if messages:
            me.ack([m.id for m in messages])


# -- subscriptions -------------------------------------------------------------------------


@click.command()
@click.argument("agent")
@click.argument("topics", nargs=-1, required=True)
@click.option("--types", default=None, help="comma-separated message types")
@click.option("--priorities", default=None, help="comma-separated priorities")
@json_option
def subscribe(
    agent: str, topics: tuple[str, ...], types: str | None, priorities: str | None, as_json: bool
) -> None:
    """Subscribe AGENT to TOPICS, optionally filtered."""
    subs = as_agent(agent).subscribe(
        list(topics),
        types=types.split(",") if types else None,
        priorities=priorities.split(",") if priorities else None,
    )
    emit(subs, as_json, lambda ss: "\n".join(f"subscribed {s.agent} to {s.topic}" for s in ss))


@click.command()
@click.argument("agent")
@click.argument("topics", nargs=-1, required=True)
@json_option
def unsubscribe(agent: str, topics: tuple[str, ...], as_json: bool) -> None:
    """Unsubscribe AGENT from TOPICS."""
    removed = as_agent(agent).unsubscribe(list(topics))
    emit({"removed": removed}, as_json, lambda r: f"removed {r['removed']} subscription(s)")
