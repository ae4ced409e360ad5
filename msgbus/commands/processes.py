"""The bus's processes: `msgbus up|worker|beat|flower|mcp|dashboard|agent run|bench`.

`up` supervises the whole stack; `mcp`, `dashboard` and `agent run` run in this process;
`worker`, `beat` and `flower` hand over to Celery's own command line (with the bus's
settings), and `bench` to the benchmark's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import click

from bus.errors import ConfigError
from bus.logs import configure
from bus.settings import Settings
from bus.topology import EXPRESS_QUEUES, PRIORITY_QUEUES
from mcp_server import dashboard as dashboard_server
from mcp_server.main import run_http, run_stdio
from msgbus.console import settings
from msgbus.supervisor import run as supervise
from workers.agent_main import serve as serve_agent

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


def _replace_with(*argv: str) -> None:
    """This process becomes `python ARGV` (Celery's and the benchmark's own commands)."""
    os.execvp(sys.executable, [sys.executable, *argv])


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--mcp-port", default=8765, show_default=True)
@click.option("--flower-port", default=5555, show_default=True, help="0 = no Flower")
@click.option("--no-services", is_flag=True, help="do not start local Redis/RabbitMQ")
def up(host: str, mcp_port: int, flower_port: int, no_services: bool) -> None:
    """Run everything on this machine: services, worker, beat, MCP HTTP (+ /ui), Flower."""
    sys.exit(supervise(host, mcp_port, flower_port, start_services=not no_services))


@click.command(context_settings=PASS_THROUGH)
@click.option("--concurrency", "-c", type=int, default=None)
@click.option("--pool", "-P", default=None)
@click.option("--queues", "-Q", default=None, help="default: all four priority queues")
@click.option("--loglevel", "-l", default="INFO")
@click.option(
    "--express", is_flag=True, help="serve only bus.critical and bus.high, ahead of other workers"
)
@click.pass_context
def worker(
    ctx: click.Context,
    concurrency: int | None,
    pool: str | None,
    queues: str | None,
    loglevel: str,
    express: bool,
) -> None:
    """Run a Celery worker delivering messages (extra args go to `celery worker`)."""
    current = settings()
    # Refused here, before a second interpreter loads Celery (workers.app checks it again).
    current.signing_keys  # noqa: B018 - production without a real secret stops here
    extra = list(ctx.args)
    if express:
        os.environ["MESSAGE_BUS_EXPRESS_WORKER"] = "1"  # the worker's own Settings read it
        queues = queues or ",".join(EXPRESS_QUEUES)
        concurrency = concurrency or 2
        if "-n" not in extra and not any(a.startswith("--hostname") for a in extra):
            extra += ["-n", "express@%h"]  # a node name of its own (pidbox)
    _replace_with(
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        queues or ",".join(PRIORITY_QUEUES),
        "-c",
        str(concurrency or current.worker_concurrency),
        "-P",
        pool or current.worker_pool,
        "-l",
        loglevel,
        *extra,
    )


@click.command()
@click.option("--loglevel", "-l", default="INFO")
def beat(loglevel: str) -> None:
    """Run Celery beat (RedBeat: one beat across restarts) for the scheduled jobs."""
    settings().signing_keys  # noqa: B018 - production without a real secret stops here
    _replace_with(
        "-m",
        "celery",
        "-A",
        "workers.app",
        "beat",
        "-S",
        "workers.beat.BusScheduler",
        "-l",
        loglevel,
    )


@click.command(context_settings=PASS_THROUGH)
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True)
@click.pass_context
def flower(ctx: click.Context, address: str, port: int) -> None:
    """Run Flower on the bus's workers (basic auth from MESSAGE_BUS_FLOWER_AUTH)."""
    current = settings()
    # Secrets go to Flower through its environment, never its command line (`ps` shows it).
    os.environ["FLOWER_BROKER_API"] = management_api(current)
    if current.flower_auth is not None:
        os.environ["FLOWER_BASIC_AUTH"] = current.flower_auth.get_secret_value()
    elif current.mode == "production" or address not in ("127.0.0.1", "localhost"):
        raise ConfigError("Flower needs MESSAGE_BUS_FLOWER_AUTH=user:password outside local dev")
    _replace_with(
        "-m",
        "celery",
        "-A",
        "workers.app",
        "flower",
        f"--address={address}",
        f"--port={port}",
        *ctx.args,
    )


def management_api(current: Settings) -> str:
    """Flower's --broker-api: MESSAGE_BUS_BROKER_API_URL, else the first broker URL's host
    (a `;`-separated list names several nodes; any one's management API sees the cluster)."""
    if current.broker_api_url:
        return current.broker_api_url
    url = urlparse(current.broker_url.split(";")[0])
    user, password = url.username or "guest", url.password or "guest"
    return f"http://{user}:{password}@{url.hostname or '127.0.0.1'}:15672/api/"


@click.command()
@click.option("--agent", default=None, help="agent id (stdio); or MESSAGE_BUS_AGENT_ID")
@click.option("--http", "use_http", is_flag=True, help="serve streamable HTTP")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option(
    "--profile",
    type=click.Choice(["core", "full"]),
    default=None,
    help="tool set [default: MESSAGE_BUS_MCP_PROFILE, else core]",
)
@click.option(
    "--modern",
    is_flag=True,
    default=None,
    help="stdio: also serve the 2026-07-28 era (subscriptions/listen; no Claude Code channel)",
)
@click.option("--tokens-file", type=click.Path(path_type=Path), default=None)
@click.option("--log-level", default=None, help="[default: MESSAGE_BUS_LOG_LEVEL]")
@click.option(
    "--processes",
    type=int,
    default=None,
    help="HTTP: server processes on the one address, 0 one per core "
    "[default: MESSAGE_BUS_MCP_PROCESSES, else 1]",
)
def mcp(
    agent: str | None,
    use_http: bool,
    host: str,
    port: int,
    profile: str | None,
    modern: bool | None,
    tokens_file: Path | None,
    log_level: str | None,
    processes: int | None,
) -> None:
    """Run the MCP server: --agent A (stdio), or --http --host H --port P [--processes N]."""
    current = settings()
    current.signing_keys  # noqa: B018 - production without a real secret stops here
    if log_level:
        configure(log_level)
    chosen = profile or current.mcp_profile
    if use_http:
        level = log_level or current.log_level
        run_http(current, host, port, chosen, tokens_file, level, processes)
    else:
        run_stdio(current, agent, chosen, current.mcp_modern if modern is None else modern)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8766, show_default=True)
@click.option("--tokens-file", type=click.Path(path_type=Path), default=None)
def dashboard(host: str, port: int, tokens_file: Path | None) -> None:
    """Serve the bus dashboard alone; it is also at /ui of `msgbus mcp --http`."""
    current = settings()
    current.signing_keys  # noqa: B018 - production without a real secret stops here
    dashboard_server.serve(current, host, port, tokens_file)


@click.group()
def agent() -> None:
    """Worker agents (Python handlers on their own queue)."""


@agent.command("run")
@click.argument("spec")
@click.option("--concurrency", "-c", type=int, default=None)
@click.option("--loglevel", "-l", default="INFO")
def agent_run(spec: str, concurrency: int | None, loglevel: str) -> None:
    """Serve the WorkerAgent named by SPEC (MODULE:OBJECT), e.g. examples.echo_agent:agent."""
    sys.path.insert(0, os.getcwd())  # SPEC's module is found where the command is run
    serve_agent(spec, concurrency, loglevel)


@click.command(context_settings={**PASS_THROUGH, "help_option_names": []})
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmark the bus against raw Celery in one run (--json, --quick, --only ...)."""
    _replace_with("-m", "bench", *ctx.args)
