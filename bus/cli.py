"""The ``msgbus`` command line.

Errors are one ``error: ...`` line on stderr and a non-zero exit code; ``--json`` prints
machine-readable output on every read command.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson
import pydantic

from bus import options
from bus.errors import BusError, ValidationError
from bus.jsonvalue import loads_exact
from bus.jsonview import to_json
from bus.options import SendOptions, parse_options
from bus.settings import Settings

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def emit(value: Any, as_json: bool, text: Callable[[Any], str] | None = None) -> None:
    if as_json or text is None:
        click.echo(to_json(value, indent=not as_json))
    else:
        click.echo(text(value))


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
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

    return wrapper  # type: ignore[return-value]


def settings_problem(exc: pydantic.ValidationError) -> str:
    """A bad MESSAGE_BUS_* variable, named as the user set it."""
    first = exc.errors()[0]
    name = "MESSAGE_BUS_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
    return f"invalid setting {name}: {first['msg'].removeprefix('Value error, ')}"


def _bus() -> Any:
    from bus.client import MessageBus

    return MessageBus(Settings())


def _as(agent: str) -> Any:
    """The handle of the agent the command acts as (the CLI holds the secret: trusted)."""
    return _bus().as_agent(agent)


def _operator() -> Any:
    """The handle of the operator at the console (admin actions, audited as such)."""
    return _bus().as_operator()


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    return loads_exact(text, what)


PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def exec_module(module: str, *args: str) -> None:
    """Replaces this process with `python -m module args` (bus/ never imports the adapters
    it launches: workers/, mcp_server/, bench/)."""
    argv = [sys.executable, "-m", module, *args]
    os.execvp(argv[0], argv)


def configure_logging(level: str = "INFO") -> None:
    from bus.logs import configure

    configure(level)


@click.group()
@click.option("--log-level", default="WARNING", envvar="MESSAGE_BUS_LOG_LEVEL", show_default=True)
def main(log_level: str) -> None:
    """agent-message-bus: typed, signed messages between agents."""
    configure_logging(log_level)


# -- sending -----------------------------------------------------------------------------


def _send_options(*names: str) -> Callable[[F], F]:
    """`--from`, `--json` and the send options `names`, generated from
    bus.options.SendOptions (the MCP tools take the same fields)."""

    def decorate(fn: F) -> F:
        decls = [
            click.option("--from", "sender", required=True, help="sender agent id"),
            *(_option(name) for name in names),
            click.option("--json", "as_json", is_flag=True, help="print JSON"),
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
        given["payload"] = _json_arg(given["payload"], "--payload")
    return parse_options(given).message(sender)


def _receipt_text(r: Any) -> str:
    extra = f" (duplicate of {r.duplicate_of})" if r.duplicate_of else ""
    return f"{r.status.value} {r.id} on {r.queue}{extra}"


@main.command()
@click.option("--message", "raw", default=None, help="a whole message as JSON ('-' for stdin)")
@_send_options("to", *options.CLI_SEND)
@handle_errors
def send(sender: str, raw: str | None, as_json: bool, **given: Any) -> None:
    """Send a message to an agent (or a topic)."""
    if raw is not None:
        message = _json_arg(raw, "--message")
        if not isinstance(message, dict):
            raise ValidationError("--message must be a JSON object")
    else:
        message = _build(sender, **{**given, "type": given["type"] or "command"})
    emit(_as(sender).send(message), as_json, _receipt_text)


@main.command()
@click.argument("topic")
@_send_options(*(name for name in options.CLI_SEND if name != "topic"))
@handle_errors
def publish(sender: str, topic: str, as_json: bool, **given: Any) -> None:
    """Publish to a topic's subscribers."""
    message = _build(sender, topic=topic, **given)
    emit(_as(sender).send(message), as_json, _receipt_text)


@main.command()
@_send_options(*(name for name in options.CLI_SEND if name not in ("topic", "type")))
@handle_errors
def broadcast(sender: str, as_json: bool, **given: Any) -> None:
    """Send to every registered agent but the sender."""
    message = _build(sender, broadcast=True, **given)
    emit(_as(sender).send(message), as_json, _receipt_text)


# -- reading -----------------------------------------------------------------------------


def _message_text(m: Any) -> str:
    head = f"[{m.metadata.priority.value}] {m.id} {m.type.value} from {m.sender}"
    return f"{head}: {orjson.dumps(m.payload).decode()}"


@main.command()
@click.argument("agent")
@click.option("--limit", default=10, show_default=True)
@click.option("--wait", type=float, default=0.0, help="long-poll up to S seconds")
@click.option("--ack", "do_ack", is_flag=True, help="ack what was read")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def read(agent: str, limit: int, wait: float, do_ack: bool, as_json: bool) -> None:
    """Read (lease) messages from AGENT's inbox."""
    me = _as(agent)
    messages = me.read(limit=limit, wait=wait)
    if do_ack and messages:
        me.ack([m.id for m in messages])
    emit(messages, as_json, lambda ms: "\n".join(_message_text(m) for m in ms) or "(no messages)")


@main.command()
@click.argument("agent")
@click.argument("ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def ack(agent: str, ids: tuple[str, ...], as_json: bool) -> None:
    """Acknowledge messages AGENT has read."""
    result = _as(agent).ack(list(ids))
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


@main.command()
@click.argument("agent")
@click.option("--limit", default=50, show_default=True)
@click.option("--since", type=float, default=None, help="unix time (seconds)")
@click.option("--type", "type_", default=None)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def history(agent: str, limit: int, since: float | None, type_: str | None, as_json: bool) -> None:
    """AGENT's history, newest first."""
    messages = _as(agent).history(limit=limit, since=since, type=type_)
    emit(messages, as_json, lambda ms: "\n".join(_message_text(m) for m in ms) or "(empty)")


@main.command()
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def status(message_id: str, as_json: bool) -> None:
    """Delivery status of a message."""
    st = _operator().status(message_id)
    emit(
        st,
        as_json,
        lambda s: (
            f"{s.status.value} attempts={s.attempts}"
            + (f" reason={s.reason}" if s.reason else "")
            + (f" error={s.error}" if s.error else "")
        ),
    )


@main.command()
@click.argument("agent")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def tail(agent: str, as_json: bool) -> None:
    """Follow AGENT's inbox live (reads and acks as messages arrive; Ctrl-C stops)."""
    me = _as(agent)
    while True:
        messages = me.read(limit=100, wait=30)
        for m in messages:
            emit(m, as_json, _message_text)
        if messages:
            me.ack([m.id for m in messages])


# -- subscriptions -------------------------------------------------------------------------


@main.command()
@click.argument("agent")
@click.argument("topics", nargs=-1, required=True)
@click.option("--types", default=None, help="comma-separated message types")
@click.option("--priorities", default=None, help="comma-separated priorities")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def subscribe(
    agent: str, topics: tuple[str, ...], types: str | None, priorities: str | None, as_json: bool
) -> None:
    """Subscribe AGENT to TOPICS, optionally filtered."""
    subs = _as(agent).subscribe(
        list(topics),
        types=types.split(",") if types else None,
        priorities=priorities.split(",") if priorities else None,
    )
    emit(subs, as_json, lambda ss: "\n".join(f"subscribed {s.agent} to {s.topic}" for s in ss))


@main.command()
@click.argument("agent")
@click.argument("topics", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def unsubscribe(agent: str, topics: tuple[str, ...], as_json: bool) -> None:
    """Unsubscribe AGENT from TOPICS."""
    removed = _as(agent).unsubscribe(list(topics))
    emit({"removed": removed}, as_json, lambda r: f"removed {r['removed']} subscription(s)")


# -- dead letters ----------------------------------------------------------------------------


@main.group()
def dlq() -> None:
    """Dead letters: list, show, replay, purge."""


def _dead_text(d: Any) -> str:
    return f"{d.id} {d.queue} reason={d.reason} attempts={d.attempts} replays={d.replays}" + (
        f" error={d.error}" if d.error else ""
    )


@dlq.command("list")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def dlq_list(limit: int, as_json: bool) -> None:
    """List dead letters (does not consume them)."""
    letters = _operator().dead_letters(limit=limit)
    if not as_json:
        for d in letters:
            d.message = None
    emit(letters, as_json, lambda ds: "\n".join(_dead_text(d) for d in ds) or "(none)")


@dlq.command("show")
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def dlq_show(message_id: str, as_json: bool) -> None:
    """Show one dead letter with its message."""
    emit(_operator().dead_letter(message_id), True if as_json else False, None)


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def dlq_replay(ids: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Replay dead letters to their priority queues."""
    replayed = _operator().replay_dead_letters(list(ids), all=all_)
    emit({"replayed": replayed}, as_json, lambda r: f"replayed {len(r['replayed'])}")


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def dlq_purge(ids: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Delete dead letters for good."""
    purged = _operator().purge_dead_letters(list(ids), all=all_)
    emit({"purged": purged}, as_json, lambda r: f"purged {len(r['purged'])}")


# -- processes -------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--mcp-port", default=8765, show_default=True)
@click.option("--flower-port", default=5555, show_default=True, help="0 = no Flower")
@click.option("--no-services", is_flag=True, help="do not start local Redis/RabbitMQ")
@handle_errors
def up(host: str, mcp_port: int, flower_port: int, no_services: bool) -> None:
    """Run everything on this machine: services, worker, beat, MCP HTTP (+ /ui), Flower."""
    from bus.supervisor import run

    sys.exit(run(host, mcp_port, flower_port, start_services=not no_services))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", type=int, default=None)
@click.option("--pool", "-P", default=None)
@click.option("--queues", "-Q", default=None, help="default: all four priority queues")
@click.option("--loglevel", "-l", default="INFO")
@click.option(
    "--express", is_flag=True, help="serve only bus.critical and bus.high, ahead of other workers"
)
@click.pass_context
@handle_errors
def worker(
    ctx: click.Context,
    concurrency: int | None,
    pool: str | None,
    queues: str | None,
    loglevel: str,
    express: bool,
) -> None:
    """Run a Celery worker delivering messages (extra args go to `celery worker`)."""
    from bus.topology import EXPRESS_QUEUES, PRIORITY_QUEUES

    settings = Settings()
    if express:
        os.environ["MESSAGE_BUS_EXPRESS_WORKER"] = "1"
        queues = queues or ",".join(EXPRESS_QUEUES)
        concurrency = concurrency or 2
        if "-n" not in ctx.args and not any(a.startswith("--hostname") for a in ctx.args):
            ctx.args.extend(["-n", "express@%h"])  # a node name of its own (pidbox)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        queues or ",".join(PRIORITY_QUEUES),
        "-c",
        str(concurrency or settings.worker_concurrency),
        "-P",
        pool or settings.worker_pool,
        "-l",
        loglevel,
        *ctx.args,
    ]
    os.execvp(argv[0], argv)


@main.command(context_settings=PASS_THROUGH)
@click.pass_context
def mcp(ctx: click.Context) -> None:
    """Run the MCP server: --agent A (stdio) or --http --host H --port P [--profile full]."""
    exec_module("mcp_server", *ctx.args)


@main.command(context_settings=PASS_THROUGH)
@click.pass_context
def dashboard(ctx: click.Context) -> None:
    """Serve the bus dashboard alone (--host, --port 8766); also at /ui of `msgbus mcp --http`."""
    exec_module("mcp_server.dashboard", *ctx.args)


@main.group()
def agent() -> None:
    """Worker agents (Python handlers on their own queue)."""


@agent.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("spec")
@click.pass_context
def agent_run(ctx: click.Context, spec: str) -> None:
    """Serve the WorkerAgent named by SPEC (MODULE:OBJECT), e.g. examples.echo_agent:agent."""
    exec_module("workers.agent_main", spec, *ctx.args)


@main.group()
def token() -> None:
    """Bearer tokens for the HTTP MCP server (only their hashes are stored)."""


def _token_file() -> Any:
    from bus.tokens import TokenFile

    settings = Settings()
    return TokenFile(settings.tokens_file or settings.state_dir / "tokens.json")


@token.command("create")
@click.argument("agent")
@handle_errors
def token_create(agent: str) -> None:
    """Print a new token for AGENT (shown once)."""
    from datetime import UTC, datetime

    click.echo(_token_file().create(agent, now=datetime.now(UTC).isoformat()))


@token.command("revoke")
@click.option("--agent", default=None, help="revoke every token of this agent")
@click.option("--token", "value", default=None, help="revoke this token")
@handle_errors
def token_revoke(agent: str | None, value: str | None) -> None:
    """Revoke a token, or all of an agent's tokens."""
    if not agent and not value:
        raise ValidationError("give --agent AGENT or --token TOKEN")
    click.echo(f"revoked {_token_file().revoke(agent=agent, token=value)}")


@main.group()
def keys() -> None:
    """Signing keys: who holds which, and which ones stored messages still need."""


@keys.command("status")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def keys_status(as_json: bool) -> None:
    """This process's keys and those of every running process (kid:fingerprint)."""
    processes, warnings = _operator().keys_in_use()
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
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def keys_usage(as_json: bool) -> None:
    """How many stored messages (inboxes, histories, dead letters) need each key id."""
    counts = _operator().key_usage()
    emit(
        counts,
        as_json,
        lambda c: (
            "\n".join(f"{kid}: {n} stored messages" for kid, n in sorted(c.items()))
            or "no stored messages"
        ),
    )


@main.group()
def audit() -> None:
    """The audit trail (a capped Redis stream)."""


@audit.command("tail")
@click.option("--count", default=20, show_default=True, help="entries shown first")
@click.option("--follow", "-f", is_flag=True, help="keep printing new entries")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def audit_tail(count: int, follow: bool, as_json: bool) -> None:
    """Show the latest audit entries (agent, action, target, outcome, trace id)."""
    operator = _operator()
    entries = operator.audit_trail(count)
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
        entries = operator.audit_trail(100, after=last, block_ms=5000)


@main.group()
def agents() -> None:
    """Agents: list them, or declare one before it connects."""


@agents.command("list")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def agents_list(as_json: bool) -> None:
    """Every known agent with its inbox depth and when it was last seen."""
    emit(
        _operator().agents(),
        as_json,
        lambda xs: "\n".join(f"{a.id} inbox={a.inbox_depth}" for a in xs) or "(none)",
    )


@agents.command("add")
@click.argument("names", nargs=-1, required=True)
@handle_errors
def agents_add(names: tuple[str, ...]) -> None:
    """Declare agents: they may get mail (and broadcasts) before they first connect."""
    operator = _operator()
    for name in names:
        added = operator.declare_agent(name)
        click.echo(f"{'declared' if added else 'already known'}: {name}")


@main.command()
@click.option("--loglevel", "-l", default="INFO")
def beat(loglevel: str) -> None:
    """Run Celery beat (RedBeat: one beat across restarts) for the scheduled jobs."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "beat",
        "-S",
        "workers.beat.BusScheduler",
        "-l",
        loglevel,
    ]
    os.execvp(argv[0], argv)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def health(as_json: bool) -> None:
    """Redis, broker, live workers, breakers, dead letters; exit 1 when not ready."""
    result = _operator().health()
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


@main.command()
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def stats(as_json: bool) -> None:
    """Queue depths, agents, topics, subscriptions, inbox depths."""
    emit(
        _operator().stats(),
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


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True)
@click.pass_context
@handle_errors
def flower(ctx: click.Context, address: str, port: int) -> None:
    """Run Flower on the bus's workers (basic auth from MESSAGE_BUS_FLOWER_AUTH)."""
    from bus.errors import ConfigError

    settings = Settings()
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "flower",
        f"--address={address}",
        f"--port={port}",
    ]
    # Secrets go to Flower through its environment, never its command line (`ps` shows it).
    os.environ["FLOWER_BROKER_API"] = _management_api(settings)
    if settings.flower_auth is not None:
        os.environ["FLOWER_BASIC_AUTH"] = settings.flower_auth.get_secret_value()
    elif settings.mode == "production" or address not in ("127.0.0.1", "localhost"):
        raise ConfigError("Flower needs MESSAGE_BUS_FLOWER_AUTH=user:password outside local dev")
    os.execvp(argv[0], [*argv, *ctx.args])


def _management_api(settings: Settings) -> str:
    """Flower's --broker-api: MESSAGE_BUS_BROKER_API_URL, else the first broker URL's host
    (a `;`-separated list names several nodes; any one's management API sees the cluster)."""
    from urllib.parse import urlparse

    if settings.broker_api_url:
        return settings.broker_api_url
    url = urlparse(settings.broker_url.split(";")[0])
    user, password = url.username or "guest", url.password or "guest"
    return f"http://{user}:{password}@{url.hostname or '127.0.0.1'}:15672/api/"


@main.command(context_settings=PASS_THROUGH)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmark the bus against raw Celery in one run (--json, --quick, --only ...)."""
    exec_module("bench", *ctx.args)


@main.group()
def services() -> None:
    """Local Redis and RabbitMQ for development (bound to 127.0.0.1)."""


def _services_text(statuses: list[Any]) -> str:
    return "\n".join(
        f"{s.name}: {'running' if s.running else 'stopped'} {s.url}"
        + (" (started by msgbus)" if s.managed else "")
        + (f" - {s.detail}" if s.detail else "")
        for s in statuses
    )


@services.command("up")
@handle_errors
def services_up() -> None:
    """Start Redis and RabbitMQ unless something already listens on the configured URLs."""
    from bus import services as svc

    settings = Settings()
    started = time.monotonic()
    statuses = svc.services_up(settings.redis_url, settings.broker_url)
    click.echo(_services_text(statuses))
    click.echo(f"ready in {time.monotonic() - started:.1f}s")


@services.command("down")
@handle_errors
def services_down() -> None:
    """Stop the servers `msgbus services up` started (never others)."""
    from bus import services as svc

    click.echo(_services_text(svc.services_down()))


@services.command("status")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def services_status(as_json: bool) -> None:
    """Whether Redis and RabbitMQ answer."""
    from dataclasses import asdict

    from bus import services as svc

    settings = Settings()
    statuses = svc.services_status(settings.redis_url, settings.broker_url)
    emit([asdict(s) for s in statuses], as_json, lambda _: _services_text(statuses))
    if not all(s.running for s in statuses):
        sys.exit(1)


@services.group("cluster")
def cluster() -> None:
    """A local 3-node RabbitMQ cluster and Redis with 2 replicas and 3 Sentinels."""


def _cluster() -> Any:
    from bus.cluster import ClusterLayout, LocalCluster

    return LocalCluster(ClusterLayout.default())


def _cluster_env(stack: Any) -> str:
    return "\n".join(f"export {k}='{v}'" for k, v in stack.env().items())


@cluster.command("up")
@handle_errors
def cluster_up() -> None:
    """Start (or complete) the local cluster; prints the settings that point the bus at it."""
    stack = _cluster()
    started = time.monotonic()
    statuses = stack.up()
    click.echo(_services_text(statuses))
    click.echo(f"ready in {time.monotonic() - started:.1f}s; point the bus at it with:")
    click.echo(_cluster_env(stack))


@cluster.command("down")
@click.option("--purge", is_flag=True, help="also delete the servers' data")
@handle_errors
def cluster_down(purge: bool) -> None:
    """Stop the local cluster's servers (never the single-node stack)."""
    click.echo(_services_text(_cluster().down(purge=purge)))


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def cluster_status(as_json: bool) -> None:
    """Each node and server: running, cluster membership, Redis roles, Sentinels' primary."""
    from dataclasses import asdict

    statuses = _cluster().status()
    emit([asdict(s) for s in statuses], as_json, lambda _: _services_text(statuses))
    if not all(s.running for s in statuses):
        sys.exit(1)


@cluster.command("env")
def cluster_env() -> None:
    """Print the settings for the local cluster (`eval "$(msgbus services cluster env)"`)."""
    click.echo(_cluster_env(_cluster()))


if __name__ == "__main__":
    main()
