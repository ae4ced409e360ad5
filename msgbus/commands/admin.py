"""Operating the bus from the console: `msgbus token|keys|audit|agents|health|stats`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from bus.errors import ValidationError
from bus.tokens import TokenFile
from msgbus.console import emit, json_option, operator, settings


@click.group()
def token() -> None:
    """Bearer tokens for the HTTP MCP server (only their hashes are stored)."""


def _token_file() -> TokenFile:
    return TokenFile(settings().tokens_path)


@token.command("create")
@click.argument("agent")
def token_create(agent: str) -> None:
    """Print a new token for AGENT (shown once)."""
    click.echo(_token_file().create(agent, now=datetime.now(UTC).isoformat()))


@token.command("revoke")
@click.option("--agent", default=None, help="revoke every token of this agent")
@click.option("--token", "value", default=None, help="revoke this token")
def token_revoke(agent: str | None, value: str | None) -> None:
    """Revoke a token, or all of an agent's tokens."""
    if not agent and not value:
        raise ValidationError("give --agent AGENT or --token TOKEN")
    click.echo(f"revoked {_token_file().revoke(agent=agent, token=value)}")


@click.group()
def keys() -> None:
    """Signing keys: who holds which, and which ones stored messages still need."""


@keys.command("status")
@json_option
def keys_status(as_json: bool) -> None:
    """This process's keys and those of every running process (kid:fingerprint)."""
    processes, warnings = operator().keys_in_use()
    emit(
        {"processes": processes, "warnings": warnings},
        as_json,
        lambda _: "\n".join(
            [
                f"{p.kind:8} {p.host} pid {p.pid}: signs {p.signs}; verifies {', '.join(p.verifies)}"
                for p in processes
            ]
            + [f"warning: {w}" for w in warnings]
        ),
    )


@keys.command("usage")
@json_option
def keys_usage(as_json: bool) -> None:
    """How many stored messages (inboxes, histories, dead letters) need each key id."""
    counts = operator().key_usage()
    emit(
        counts,
        as_json,
        lambda c: (
            "\n".join(f"{kid}: {n} stored messages" for kid, n in sorted(c.items()))
            or "no stored messages"
        ),
    )


@click.group()
def audit() -> None:
    """The audit trail (a capped Redis stream)."""


@audit.command("tail")
@click.option("--count", default=20, show_default=True, help="entries shown first")
@click.option("--follow", "-f", is_flag=True, help="keep printing new entries")
@json_option
def audit_tail(count: int, follow: bool, as_json: bool) -> None:
    """Show the latest audit entries (agent, action, target, outcome, trace id)."""
    console = operator()
    entries = console.audit_trail(count)
    last = entries[-1][0] if entries else "$"
    while True:
        for entry_id, fields in entries:
            last = entry_id
            emit(
                {"entry": entry_id, **fields},
                as_json,
                lambda e: " ".join(f"{k}={v}" for k, v in e.items()),
            )
        if not follow:
            return
        entries = console.audit_trail(100, after=last, block_ms=5000)


@click.group()
def agents() -> None:
    """Agents: list them, or declare one before it connects."""


@agents.command("list")
@json_option
def agents_list(as_json: bool) -> None:
    """Every known agent with its inbox depth and when it was last seen."""
    emit(
        operator().agents(),
        as_json,
        lambda xs: "\n".join(f"{a.id} inbox={a.inbox_depth}" for a in xs) or "(none)",
    )


@agents.command("add")
@click.argument("names", nargs=-1, required=True)
def agents_add(names: tuple[str, ...]) -> None:
    """Declare agents: they may get mail (and broadcasts) before they first connect."""
    console = operator()
    for name in names:
        added = console.declare_agent(name)
        click.echo(f"{'declared' if added else 'already known'}: {name}")


@click.command()
@json_option
def health(as_json: bool) -> None:
    """Redis, broker, live workers, breakers, dead letters; exit 1 when not ready."""
    result = operator().health()
    emit(
        result,
        as_json,
        lambda h: "\n".join(
            [
                f"ready: {'yes' if h.ready else 'NO'}",
                f"redis: {h.redis}",
                f"broker: {h.broker}",
                f"workers: {', '.join(h.workers) or 'none'}",
                f"dead letters: {h.dead_letters}",
                "breakers: " + ", ".join(f"{k}={v}" for k, v in h.breakers.items()),
                "keys (signs / verifies, kid:fingerprint):",
            ]
            + [
                f"  {p.kind:8} {p.host} pid {p.pid}: signs {p.signs}; verifies "
                + ", ".join(p.verifies)
                for p in h.processes
            ]
            + [f"warning: {w}" for w in h.warnings]
        ),
    )
    if not result.ready:
        sys.exit(1)


@click.command()
@json_option
def stats(as_json: bool) -> None:
    """Queue depths, agents, topics, subscriptions, inbox depths."""
    emit(
        operator().stats(),
        as_json,
        lambda st: "\n".join(
            [
                f"agents: {st.agents}  topics: {st.topics}  subscriptions: {st.subscriptions}",
                "queues: " + ", ".join(f"{q}={n}" for q, n in st.queue_depths.items()),
                f"dead letters: {st.dead_letters}",
            ]
            + [f"inbox {a}: {n}" for a, n in sorted(st.inbox_depths.items()) if n]
        ),
    )
