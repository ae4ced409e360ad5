"""Every number an entrance takes (a limit, a wait, a time, a timeout, a count) is a number of
the right kind in range, at every entrance: the library, the command line and the MCP
tools. A bool, a numeric string, a fraction where a whole number goes, NaN or a value past
the bound is refused with an error naming the argument and its range, never passed on to
Redis or a slice (a raw error, or a silent empty answer)."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from mcp.client import Client

from bus.errors import LimitExceeded, ValidationError
from mcp_server.identity import Identity
from mcp_server.server import build_server
from tests.support.processes import msgbus

pytestmark = pytest.mark.timeout(120)

NOT_WHOLE = [True, 2.5, "5", None, 0, -1]


@pytest.mark.parametrize("limit", [*NOT_WHOLE, 501])
def test_a_read_limit_is_a_whole_number_up_to_the_batch_size(bus, agents, limit):
    with pytest.raises(ValidationError, match=r"limit must be a whole number 1\.\.500 "):
        bus.read(agents("reader"), limit=limit)


@pytest.mark.parametrize("wait", [True, "1", math.nan, math.inf, -0.5, 61])
def test_a_read_wait_is_a_number_of_seconds_in_range(bus, agents, wait):
    with pytest.raises(ValidationError, match=r"wait must be 0\.\.60 seconds"):
        bus.read(agents("reader"), wait=wait)


@pytest.mark.parametrize("limit", [*NOT_WHOLE, 10**30])
def test_a_history_limit_is_a_whole_number_up_to_the_history_size(bus, agents, limit):
    with pytest.raises(ValidationError, match=r"limit must be a whole number 1\.\.1000 "):
        bus.history(agents("reader"), limit=limit)


@pytest.mark.parametrize("since", [True, "5"])
def test_a_history_since_is_a_time_or_a_number(bus, agents, since):
    with pytest.raises(ValidationError, match="since: expected a number"):
        bus.history(agents("reader"), since=since)


@pytest.mark.parametrize("limit", [*NOT_WHOLE, math.nan, math.inf, 1e308, 10**30, 100_001])
def test_a_dead_letter_listing_is_bounded_and_its_limit_checked(bus, limit):
    """At most what the queue may hold (DEAD_LETTER_MAX_LENGTH); MCP and the dashboard
    show 1000 at most."""
    with pytest.raises(ValidationError, match=r"limit must be a whole number 1\.\.100000 "):
        bus.dead_letters(limit=limit)


def test_a_request_timeout_is_not_a_bool(bus, agents):
    with pytest.raises(ValidationError, match="timeout: expected a number, got True"):
        bus.request({"from": agents("asker"), "to": agents("nobody")}, timeout=True)


@pytest.mark.parametrize("count", [0, -1, True, 2.5, 100_001])
def test_an_audit_tail_count_is_checked(bus, count):
    with pytest.raises(ValidationError, match=r"count must be a whole number 1\.\.100000"):
        bus.as_operator().audit_trail(count)


def test_the_numbers_at_their_bounds_pass(bus, agents):
    """The positive control: the same calls with numbers at the edges of their ranges."""
    reader = agents("reader")
    assert bus.read(reader, limit=500, wait=0) == []
    assert bus.read(reader, limit=1, wait=0.01) == []
    assert bus.history(reader, limit=1000, since=0) == []
    assert bus.history(reader, limit=1, since=1.5) == []
    assert isinstance(bus.dead_letters(limit=100_000), list)
    assert isinstance(bus.dead_letters(limit=1), list)
    assert isinstance(bus.as_operator().audit_trail(1), list)


def test_an_ack_over_the_batch_size_names_the_setting(bus, agents):
    with pytest.raises(LimitExceeded, match=r"at most 500 ids per ack \(MESSAGE_BUS_MAX_BATCH\)"):
        bus.ack(agents("reader"), [f"id-{i}" for i in range(501)])


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "list", "--limit", "0"],
        ["dlq", "list", "--limit", "-1"],
        ["audit", "tail", "--count", "-1"],
    ],
)
def test_the_command_line_refuses_a_count_out_of_range_with_one_error_line(module_env, args):
    out = msgbus(module_env, *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "must be a whole number" in out.stderr and "Traceback" not in out.stderr
    assert "(none)" not in out.stdout


def test_the_command_line_takes_a_count_in_range(module_env, worker):
    assert msgbus(module_env, "dlq", "list", "--limit", "1").returncode == 0
    assert msgbus(module_env, "audit", "tail", "--count", "1").returncode == 0


@pytest.fixture(scope="module")
def server(module_env, worker):
    srv, _ = build_server(module_env.settings(), Identity.stdio("numbers"), "full")
    yield srv
    srv.bus.close()


def _call(srv, tool, args):
    async def call():
        async with Client(srv) as client:
            return await client.call_tool(tool, args)

    return asyncio.run(call())


@pytest.mark.parametrize(
    ("tool", "args", "named"),
    [
        ("read_messages", {"limit": True}, "limit"),
        ("read_messages", {"limit": "5"}, "limit"),
        ("read_messages", {"limit": 2.5}, "limit"),
        ("read_messages", {"wait_seconds": True}, "wait_seconds"),
        ("read_messages", {"wait_seconds": "1"}, "wait_seconds"),
        ("read_messages", {"wait_seconds": math.nan}, "wait_seconds"),
        ("get_history", {"limit": "5"}, "limit"),
        ("get_history", {"limit": True}, "limit"),
        ("request", {"to": "numbers-echo", "timeout_seconds": True}, "timeout_seconds"),
    ],
)
def test_the_mcp_tools_take_json_numbers_only(server, tool, args, named):
    result = _call(server, tool, args)
    assert result.is_error, result
    assert named in result.content[0].text


def test_the_mcp_tools_take_numbers_in_range(server):
    """The positive control: the same tools with plain JSON numbers."""
    for tool, args in [
        ("read_messages", {"limit": 5, "wait_seconds": 0}),
        ("read_messages", {"limit": 500, "wait_seconds": 0.01}),
        ("get_history", {"limit": 1000}),
    ]:
        result = _call(server, tool, args)
        assert not result.is_error, (tool, args, result.content)
        assert json.loads(result.content[0].text) is not None
