"""Local servers for development and tests: `msgbus services up|down|status` (one Redis and
one RabbitMQ) and `msgbus services cluster up|down|status|env` (the multi-node stack)."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any

import click

from msgbus import services as local
from msgbus.cluster import ClusterLayout, LocalCluster
from msgbus.console import emit, json_option, settings


@click.group()
def services() -> None:
    """Local Redis and RabbitMQ for development (bound to 127.0.0.1)."""


def _services_text(statuses: list[Any]) -> str:
    return "\n".join(
        f"{s.name}: {'running' if s.running else 'stopped'} {s.url}"
        + (" (started by msgbus)" if s.managed else "")
        + (f" - {s.detail}" if s.detail else "")
        for s in statuses
    )


def _report(statuses: list[Any], as_json: bool) -> None:
    emit([asdict(s) for s in statuses], as_json, lambda _: _services_text(statuses))
    if not all(s.running for s in statuses):
        sys.exit(1)


@services.command("up")
def services_up() -> None:
    """Start Redis and RabbitMQ unless something already listens on the configured URLs."""
    current = settings()
    started = time.monotonic()
    statuses = local.services_up(current.redis_url, current.broker_url)
    click.echo(_services_text(statuses))
    click.echo(f"ready in {time.monotonic() - started:.1f}s")


@services.command("down")
def services_down() -> None:
    """Stop the servers `msgbus services up` started (never others)."""
    click.echo(_services_text(local.services_down()))


@services.command("status")
@json_option
def services_status(as_json: bool) -> None:
    """Whether Redis and RabbitMQ answer."""
    current = settings()
    _report(local.services_status(current.redis_url, current.broker_url), as_json)


@services.group("cluster")
def cluster() -> None:
    """A local 3-node RabbitMQ cluster and Redis with 2 replicas and 3 Sentinels."""


def _cluster() -> LocalCluster:
    return LocalCluster(ClusterLayout.default())


def _cluster_env(stack: LocalCluster) -> str:
    return "\n".join(f"export {k}='{v}'" for k, v in stack.env().items())


@cluster.command("up")
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
def cluster_down(purge: bool) -> None:
    """Stop the local cluster's servers (never the single-node stack)."""
    click.echo(_services_text(_cluster().down(purge=purge)))


@cluster.command("status")
@json_option
def cluster_status(as_json: bool) -> None:
    """Each node and server: running, cluster membership, Redis roles, Sentinels' primary."""
    _report(_cluster().status(), as_json)


@cluster.command("env")
def cluster_env() -> None:
    """Print the settings for the local cluster (`eval "$(msgbus services cluster env)"`)."""
    click.echo(_cluster_env(_cluster()))
