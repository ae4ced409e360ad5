"""How many processes the MCP HTTP server runs (MESSAGE_BUS_MCP_PROCESSES, --processes)."""

from __future__ import annotations

import os

import pytest

from bus.errors import ConfigError
from bus.settings import Settings
from mcp_server.processes import processes_wanted


def test_the_setting_the_option_and_one_per_core(monkeypatch):
    monkeypatch.delenv("MESSAGE_BUS_MCP_PROCESSES", raising=False)
    assert processes_wanted(Settings(), None) == 1  # one process unless asked
    monkeypatch.setenv("MESSAGE_BUS_MCP_PROCESSES", "3")
    assert processes_wanted(Settings(), None) == 3
    assert processes_wanted(Settings(), 2) == 2  # --processes wins
    assert processes_wanted(Settings(), 0) == (os.cpu_count() or 1)


def test_a_negative_count_is_refused():
    with pytest.raises(ConfigError, match="--processes -1"):
        processes_wanted(Settings(), -1)
