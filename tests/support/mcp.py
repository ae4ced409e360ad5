"""The `mcp` package's real clients, over stdio and streamable HTTP, for a test's bus."""

from __future__ import annotations

import asyncio
import sys

import httpx2
from mcp import StdioServerParameters
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.paths import ROOT


def stdio(env, agent, profile="core", *flags, **extra):
    return Client(
        StdioServerParameters(
            command=sys.executable,
            args=["-m", "msgbus", "mcp", "--agent", agent, "--profile", profile, *flags],
            env=env.env(**extra),
            cwd=str(ROOT),
        ),
        read_timeout_seconds=60,
    )


async def call(client, tool, args=None):
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def error_of(client, tool, args):
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return result.content[0].text


def http(url, token, **kwargs):
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return Client(streamable_http_client(f"{url}/mcp", http_client=client), **kwargs)


def run(coro):
    return asyncio.run(coro)


class ResourceUpdates:
    """A client's `message_handler` that keeps the URI of every resources/updated
    notification (`uris`) and sets `arrived` at each. Made inside the event loop it is used
    on (its Event belongs to that loop)."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self.arrived = asyncio.Event()

    async def __call__(self, message) -> None:
        params = getattr(getattr(message, "root", message), "params", None)
        if getattr(params, "uri", None) is not None:
            self.uris.append(str(params.uri))
            self.arrived.set()
