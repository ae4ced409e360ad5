"""Operations with real processes: beat replays transient dead letters only, metrics move,
/readyz follows the workers, and a Redis outage mid-burst loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx
import pytest

from bus.breaker import BREAKERS
from bus.errors import BusUnavailable
from bus.tokens import TokenFile
from tests.support.contract import METRICS
from tests.support.killed import killed_send
from tests.support.paths import ROOT
from tests.support.processes import PrivateRedis, free_port, spawn, stop
from tests.support.waiting import holds_for, wait_for
from tests.support.web import http_status, metric, start_http_server
from tests.support.wire import publish_raw, wire_for

pytestmark = pytest.mark.timeout(240)


def test_beat_replays_a_transient_dead_letter_and_leaves_a_bad_signature_alone(fresh_env, agents):
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    broken = fresh_env.start_worker(MESSAGE_BUS_REDIS_URL="redis://127.0.0.1:1/0")
    transient = bus.send_message(
        {"from": sender, "to": reader, "payload": "again", "metadata": {"max_retries": 1}}
    )
    forged = wire_for(sender, reader, "forged")
    forged["signature"] = {"kid": "k1", "alg": "HMAC-SHA256", "value": "0" * 64}
    publish_raw(fresh_env, forged)
    letters = wait_for(
        lambda: (
            {d.id: d.reason for d in bus.dead_letters()} if len(bus.dead_letters()) == 2 else None
        ),
        30,
        "two dead letters",
    )
    assert letters == {transient.id: "retries_exhausted", forged["id"]: "bad_signature"}
    broken.stop()

    fresh_env.start_worker()
    beat, log = spawn(
        fresh_env,
        "beat",
        ["-m", "msgbus", "beat"],
        MESSAGE_BUS_REPLAY_INTERVAL="1",
        MESSAGE_BUS_STATS_INTERVAL="1",
    )
    try:
        got = wait_for(
            lambda: bus.read(reader, limit=10, wait=0.5),
            40,
            "beat to replay the transient dead letter",
        )
        assert [m.id for m in got] == [transient.id]
        holds_for(
            lambda: (
                [(d.id, d.reason) for d in bus.dead_letters()] == [(forged["id"], "bad_signature")]
            ),
            2.5,
            "the forged dead letter staying put across beat periods",
        )
        assert bus.read(reader, limit=10) == []
        assert "bus.replay_dead_letters" in log.read_text()
    finally:
        stop(beat)


def test_beat_publishes_a_message_whose_sender_died_before_the_publish(fresh_env, agents):
    """The outbox end to end: a sender SIGKILLed between admission and publish, and beat's
    `bus.resend_unconfirmed` (every RESEND_INTERVAL) publishes what it admitted once its
    lease has passed (BROKER_TIMEOUT 1 s: a 3 s lease). Nobody retries."""
    fresh_env.overrides |= {"MESSAGE_BUS_BROKER_TIMEOUT": "1", "MESSAGE_BUS_RESEND_INTERVAL": "1"}
    fresh_env.start_worker()
    bus, sender, reader = fresh_env.bus(), agents("s"), agents("r")
    assert bus.read(reader, limit=1, wait=0) == []
    message = {"id": f"orphan-{sender}", "from": sender, "to": reader, "payload": "still here"}
    killed_send(fresh_env, "publish", message)
    assert bus.status(message["id"]).status.value == "queued"
    beat, log = spawn(fresh_env, "beat-resend", ["-m", "msgbus", "beat"])
    try:
        got = wait_for(lambda: bus.read(reader, limit=10, wait=0.5), 40, "beat to publish it")
        assert [(m.id, m.payload) for m in got] == [(message["id"], "still here")]
        assert "bus.resend_unconfirmed" in log.read_text()
    finally:
        stop(beat)
        bus.close()


def test_worker_metrics_move_when_messages_flow_and_http_metrics_name_everything(
    fresh_env, agents, tmp_path
):
    port = free_port()
    fresh_env.start_worker(MESSAGE_BUS_METRICS_PORT=str(port))
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    assert bus.read(reader) == []  # the reader connects: an agent the bus knows
    url = f"http://127.0.0.1:{port}/metrics"
    before = metric(httpx.get(url).text, "message_bus_messages_total", status="delivered")
    receipts = [bus.send_message({"from": sender, "to": reader, "payload": i}) for i in range(5)]
    wait_for(
        lambda: all(bus.status(r.id).status.value == "delivered" for r in receipts), 15, "delivery"
    )
    text = wait_for(
        lambda: (
            lambda t: (
                t
                if metric(t, "message_bus_messages_total", status="delivered") >= before + 5
                else None
            )
        )(httpx.get(url).text),
        10,
        "the delivered counter to move",
    )
    assert metric(text, "message_bus_message_duration_seconds_count", type="event") >= 5

    tokens = tmp_path / "tokens.json"
    TokenFile(tokens).create("ops")
    server, base = start_http_server(fresh_env, "mcp-metrics", tokens)
    try:
        # Gauges are refreshed in the background (a scrape costs no broker round trip).
        text = wait_for(
            lambda: (
                lambda t: t if metric(t, "message_bus_inbox_depth", agent=reader) == 5 else None
            )(httpx.get(f"{base}/metrics", timeout=10).text),
            20,
            "the inbox gauge",
        )
        for name in METRICS:
            assert name in text, name
        assert metric(text, "message_bus_queue_depth", queue="bus.normal") == 0
    finally:
        stop(server)


def test_readyz_flips_when_the_worker_stops(fresh_env, tmp_path):
    worker = fresh_env.start_worker()
    tokens = tmp_path / "tokens.json"
    TokenFile(tokens).create("ops")
    server, base = start_http_server(fresh_env, "mcp-ready", tokens)
    try:
        wait_for(lambda: http_status(f"{base}/readyz") == 200, 30, "/readyz 200 with a worker")
        worker.stop()
        wait_for(lambda: http_status(f"{base}/readyz") == 503, 30, "/readyz 503 without workers")
        body = httpx.get(f"{base}/readyz").json()
        assert body["worker_count"] == 0 and "workers" not in body
        # Unauthenticated, it names no process and no key fingerprint (an offline test of
        # guesses at the secret); `msgbus health` shows them (below).
        assert "processes" not in body and isinstance(body["warnings"], int), body
        assert "k1:" not in json.dumps(body), body
        assert http_status(f"{base}/healthz") == 200  # liveness is not readiness
        out = subprocess.run(
            [sys.executable, "-m", "msgbus", "health"],
            cwd=ROOT,
            env=fresh_env.env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 1 and "ready: NO" in out.stdout
        assert "k1:" in out.stdout, out.stdout  # the keys, kid:fingerprint, for the operator
    finally:
        stop(server)


def test_redis_outage_mid_burst_loses_nothing_and_the_breaker_opens_then_closes(
    fresh_env, tmp_path, agents
):
    redis_ = PrivateRedis(free_port(), tmp_path)
    redis_url = redis_.url
    redis_up = redis_.start

    redis_up()
    fresh_env.overrides |= {
        "MESSAGE_BUS_REDIS_URL": redis_url,
        "MESSAGE_BUS_DEFAULT_MAX_RETRIES": "100",
    }
    fresh_env.start_worker()
    bus = fresh_env.bus()
    seen_states = []
    BREAKERS["redis"].listeners.append(lambda target, state: seen_states.append(state))
    sender, reader = agents("s"), agents("r")
    sent = []
    try:
        for i in range(1000):
            if i == 300:
                redis_.stop(graceful=True)
            if i == 700:
                assert bus.runtime.store and BREAKERS["redis"].state in ("open", "half_open")
                redis_up()
            sent.append(
                bus.send_message(
                    {"from": sender, "to": reader, "payload": i, "id": str(uuid.uuid4())}
                ).id
            )
        got = set()

        def drain():
            try:
                messages = bus.read(reader, limit=500, wait=0.5)
            except BusUnavailable:  # reads fail fast until the breaker lets a try through
                return False
            got.update(m.id for m in messages)
            bus.ack(reader, [m.id for m in messages])
            return got >= set(sent)

        wait_for(drain, 90, "every message after the outage", interval=0)
        assert set(sent) - got == set()
        assert "open" in seen_states and seen_states[-1] == "closed"
        assert bus.dead_letters() == []
    finally:
        redis_.stop()


def test_worker_metrics_answer_only_their_own_names_and_the_metrics_token(fresh_env):
    """The exporter names every agent and its inbox depth: a page in a browser on this
    machine once read it by DNS rebinding (any Host), and METRICS_TOKEN did not guard it."""
    port = free_port()
    fresh_env.start_worker(
        MESSAGE_BUS_METRICS_PORT=str(port), MESSAGE_BUS_METRICS_TOKEN="scrape-me"
    )
    url = f"http://127.0.0.1:{port}/metrics"
    bearer = {"Authorization": "Bearer scrape-me"}
    wait_for(lambda: http_status(url) == 401, 30, "the exporter, asking for the token")
    scraped = httpx.get(url, headers=bearer)
    assert scraped.status_code == 200 and "message_bus_messages_total" in scraped.text  # control
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer guess"}).status_code == 401
    rebound = httpx.get(url, headers={**bearer, "Host": f"evil.example:{port}"})
    assert rebound.status_code == 421 and "message_bus" not in rebound.text
    foreign = httpx.get(url, headers={**bearer, "Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert httpx.get(f"http://localhost:{port}/metrics", headers=bearer).status_code == 200
    by_address = httpx.get(url, headers={**bearer, "Host": f"10.1.2.3:{port}"})
    assert by_address.status_code == 200  # Prometheus scrapes by address: no rebinding there
