"""One clock (Redis's) for every host, and keys checked before a message is sent.

A host whose clock runs ahead is simulated by a process whose `time.time` is shifted (a
`sitecustomize` on its path): as far as the bus's Python code is concerned, its clock is
wrong by that much."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bus.errors import SecurityError
from tests.support.paths import ROOT
from tests.support.processes import msgbus
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

SKEW = 600.0  # seconds ahead: twice the allowed clock skew (MESSAGE_BUS_CLOCK_SKEW=300)
LEASE = 10  # seconds: the first reader's lease
SHIFTED_CLOCK = f"""
import time
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + {SKEW}
time.time_ns = lambda: _time_ns() + {int(SKEW * 1e9)}
"""


@pytest.fixture(scope="module")
def skewed_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("skewed-clock")
    (path / "sitecustomize.py").write_text(SHIFTED_CLOCK)
    return path


def msgbus_ahead(env, skewed_path, *args, **settings):
    """`msgbus ...` on a host whose clock runs SKEW seconds ahead."""
    return msgbus(env, *args, PYTHONPATH=f"{skewed_path}:{ROOT}", **settings)


def test_the_shifted_clock_really_runs_ahead_in_those_processes(module_env, skewed_path):
    probe = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        env=module_env.env(PYTHONPATH=f"{skewed_path}:{ROOT}"),
        capture_output=True,
        text=True,
    )
    assert float(probe.stdout) - time.time() > SKEW - 5


def test_a_sender_whose_clock_runs_ahead_still_has_its_messages_delivered(
    module_env, worker, bus, agents, skewed_path
):
    sender, reader = agents("s"), agents("r")
    sent = msgbus_ahead(
        module_env,
        skewed_path,
        "send",
        "--from",
        sender,
        "--to",
        reader,
        "--payload",
        "1",
        "--json",
    )
    assert sent.returncode == 0, sent.stderr
    receipt = json.loads(sent.stdout)
    [message] = wait_for(lambda: bus.read(reader, limit=1, wait=1), 15, "the delivery")
    assert message.id == receipt["id"]
    # Stamped by Redis's clock, not the sender's.
    assert abs(message.timestamp.timestamp() - time.time()) < 30
    assert bus.status(receipt["id"]).status.value == "read"


def test_a_reader_whose_clock_runs_ahead_cannot_take_over_another_readers_lease(
    module_env, worker, agents, skewed_path
):
    sender, reader = agents("s"), agents("r")
    # Long enough for the skewed CLI to start under a loaded machine (it took over 3 s).
    quick = module_env.bus(visibility_timeout=LEASE)
    receipt = quick.send_message({"from": sender, "to": reader, "payload": "mine"})
    [leased] = wait_for(lambda: quick.read(reader, limit=1, wait=1), 15, "the first read")
    assert leased.id == receipt.id

    def read_ahead():
        result = msgbus_ahead(module_env, skewed_path, "read", reader, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    # Its clock says the lease ran out ten minutes ago; Redis's says it has not.
    assert read_ahead() == []
    # Positive control: once the lease has run out by Redis's clock, it comes back.
    again = wait_for(read_ahead, LEASE + 15, "the lease to run out by Redis's clock")
    assert [m["id"] for m in again] == [receipt.id] and again[0]["delivery_count"] == 2


def test_a_sender_whose_secret_no_worker_knows_is_refused_at_send_and_told_why(
    module_env, worker, bus, agents
):
    sender, reader = agents("s"), agents("r")
    stranger = module_env.bus(secret="another-secret-" + "y" * 20)
    wait_for(
        lambda: any(p.kind == "worker" for p in bus.runtime.keyring.live()),
        40,
        "the worker to announce its keys",
    )
    with pytest.raises(SecurityError, match="no running worker can verify") as refused:
        stranger.send_message({"from": sender, "to": reader, "payload": 1})
    assert refused.value.reason == "unknown_key"
    assert "MESSAGE_BUS_SECRET" in refused.value.message
    health = stranger.health()
    assert any("no running worker verifies" in w for w in health.warnings)
    assert any("stands for 2 different secrets" in w for w in health.warnings)
    # Nothing was sent; the rightful sender is served.
    assert bus.read(reader, limit=10) == []
    receipt = bus.send_message({"from": sender, "to": reader, "payload": 2})
    [message] = wait_for(lambda: bus.read(reader, limit=1, wait=1), 15, "the delivery")
    assert (message.id, message.payload) == (receipt.id, 2)
    assert bus.health().warnings == []
