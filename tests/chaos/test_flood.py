"""One hostile agent against the bounds (marker `chaos`; `--chaos-long` for 100,000 ids).

The hostile agent (tests/chaos/flood.py, its own process, acting through the handle the MCP
tools use) mails never-seen random ids, broadcasts and floods sends the ACL denies, while
it holds 30 long-polls open on the MCP HTTP server; meanwhile two honest agents exchange
mail through that server. Pass: every honest message is delivered, the hostile agent's
never-seen recipients stop at the cap (`unknown_agent`), Redis stays within the memory
budget of docs/operations.md ("Memory budget"), and the audit trail still holds what was
written before the flood. Figures go to test-artifacts/flood-results.jsonl and
tests/chaos/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import time
import uuid

import pytest
import redis

from bus.store import AUDIT_MAXLEN
from bus.tokens import TokenFile
from tests.chaos.harness import RESULTS
from tests.support.mcp import http
from tests.support.paths import ARTIFACTS, REDIS_URL, ROOT
from tests.support.processes import stop
from tests.support.waiting import wait_for
from tests.support.web import start_http_server

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1200)]

HOSTILE, HONEST = "hostile", ("honest-a", "honest-b")
ACL = f"""
default: allow
agents:
  {HOSTILE}:
    send: ["r*"]        # the random ids; the honest agents are out of its reach
    broadcast: true
"""
RATE, BURST = 100, 100  # MESSAGE_BUS_RATE_LIMIT=100/s, the front door's default
MAX_UNSEEN = 100
INBOX_MAX = 200
HISTORY_LIMIT = 200
HISTORY_MAX_BYTES = 256 * 1024
BOUNDS = {
    "MESSAGE_BUS_RATE_LIMIT": f"{RATE}/s",
    "MESSAGE_BUS_MAX_UNSEEN_RECIPIENTS": str(MAX_UNSEEN),
    "MESSAGE_BUS_INBOX_MAX": str(INBOX_MAX),
    "MESSAGE_BUS_HISTORY_LIMIT": str(HISTORY_LIMIT),
    "MESSAGE_BUS_HISTORY_MAX_BYTES": str(HISTORY_MAX_BYTES),
}
HONEST_MESSAGES = 150  # each way
LONG_POLLS = 30

# The constants of docs/operations.md "Memory budget" (bytes, MEMORY USAGE on Redis 7.0,
# rounded up from the measured figures of this test): what one stored entry costs beyond
# the message's own wire JSON, and the fixed cost of one message's records.
INBOX_ENTRY = 300  # body hash field + meta field + ready zset member
HISTORY_ENTRY = 150  # zset member overhead
PER_MESSAGE = 1200  # status hash + delivered set + two dedup strings (+ key overheads)
AUDIT_ENTRY = 300  # one stream entry
PER_AGENT_KEYS = 2048  # the small keys an agent has (seen, unseen set, rate bucket...)
FIXED = 1024 * 1024  # process and key registries, rate counters, Celery/redbeat keys


def budget(agents: int, unseen: int, front_door_agents: int, seconds: float, m: int) -> int:
    """docs/operations.md: (A + U) x (inbox + 2 histories + small keys) + N x per-message
    + audit + fixed, with N <= front-door agents x (rate x seconds + burst)."""
    inbox = INBOX_MAX * (m + INBOX_ENTRY)
    history = min(
        HISTORY_LIMIT * (m + HISTORY_ENTRY), HISTORY_MAX_BYTES + HISTORY_LIMIT * HISTORY_ENTRY
    )
    messages = front_door_agents * (RATE * seconds + BURST)
    per_agent = inbox + 2 * history + PER_AGENT_KEYS  # received and sent, capped apart
    return int(
        (agents + unseen) * per_agent + messages * PER_MESSAGE + AUDIT_MAXLEN * AUDIT_ENTRY + FIXED
    )


@pytest.fixture
def size(request):
    if request.config.getoption("--chaos-long"):
        return {"random": 100_000, "broadcasts": 20_000, "denied": 100_000, "seconds": 480}
    return {"random": 8_000, "broadcasts": 2_000, "denied": 8_000, "seconds": 60}


def prefix_keys(client, prefix):
    """Every key under the prefix with its MEMORY USAGE (exact: SAMPLES 0), by kind."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    sizes = pipe.execute()
    kinds: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for key, used in zip(keys, sizes, strict=True):
        kind = key[len(prefix) :].split(":", 1)[0].split("{", 1)[0] or "?"
        kinds[kind][0] += 1
        kinds[kind][1] += int(used or 0)
    return keys, {k: tuple(v) for k, v in sorted(kinds.items())}


def used_memory(client):
    return int(client.info("memory")["used_memory"])


async def honest_exchange(url, tokens, flooding, deadline):
    """honest-a and honest-b mail each other for as long as the flood lasts (at least
    HONEST_MESSAGES each), reading and acking all along; a refused send (rate limit, a full
    inbox) is retried, as its error says."""
    sent = {agent: set() for agent in HONEST}
    got = {agent: set() for agent in HONEST}
    refusals = collections.Counter()
    done = {agent: False for agent in HONEST}

    async def send(client, me, other):
        i = 0
        while (flooding() or i < HONEST_MESSAGES) and time.monotonic() < deadline:
            token = f"{me}-{i}-{uuid.uuid4().hex[:6]}"
            while time.monotonic() < deadline:
                result = await client.call_tool(
                    "send_message",
                    {"to": other, "payload": {"token": token}, "dedup_key": token},
                )
                if not result.is_error:
                    sent[me].add(token)
                    break
                refusals[_kind(result.content[0].text)] += 1
                await asyncio.sleep(0.05)
            i += 1
            await asyncio.sleep(0.02)  # a steady stream through the whole flood
        done[me] = True

    async def read(client, me, other):
        while time.monotonic() < deadline and not (done[other] and sent[other] <= got[me]):
            result = await client.call_tool("read_messages", {"limit": 200, "wait_seconds": 1})
            if result.is_error:
                refusals["read: " + result.content[0].text[:40]] += 1
                continue
            messages = result.structured_content["messages"]
            got[me] |= {
                m["payload"]["token"]
                for m in messages
                if m["from"] == other and isinstance(m.get("payload"), dict)
            }
            if messages:
                await client.call_tool("ack_messages", {"ids": [m["id"] for m in messages]})

    async with http(url, tokens[HONEST[0]]) as a, http(url, tokens[HONEST[1]]) as b:
        await asyncio.gather(
            send(a, *HONEST),
            send(b, *reversed(HONEST)),
            read(a, *HONEST),
            read(b, *reversed(HONEST)),
        )
    return sent, got, refusals


def _kind(text):
    for word, kind in (("rate limit", "rate_limited"), ("inbox of", "inbox_full")):
        if word in text:
            return kind
    return text[:60]


async def hostile_long_polls(url, token, until):
    """LONG_POLLS read_messages calls held open at once, over and over, until `until()`."""
    answered = collections.Counter()

    async def one(client):
        while not until():
            result = await client.call_tool("read_messages", {"wait_seconds": 5})
            answered["error" if result.is_error else "answered"] += 1

    async with http(url, token) as client:
        await asyncio.gather(*(one(client) for _ in range(LONG_POLLS)))
    return answered


def test_one_hostile_agent_stays_bounded_and_honest_mail_flows(fresh_env, tmp_path, size):
    acl = tmp_path / "acl.yaml"
    acl.write_text(ACL)
    fresh_env.overrides |= BOUNDS | {"MESSAGE_BUS_ACL_FILE": str(acl)}
    fresh_env.start_worker()
    tokens_path = tmp_path / "tokens.json"
    tokens = {name: TokenFile(tokens_path).create(name) for name in (HOSTILE, *HONEST)}
    server, url = start_http_server(fresh_env, "mcp-flood", tokens_path)
    bus = fresh_env.bus()
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        for agent in HONEST:  # they connect, and write the trail the flood must not flush
            bus.read(agent)
            bus.subscribe(agent, [f"{agent}/news"])
        for i in range(5):
            bus.send_message({"from": HONEST[0], "to": HONEST[1], "payload": f"before {i}"})
        before_trail = [entry_id for entry_id, _ in client.xrange(bus.runtime.keys.audit)]
        assert before_trail
        memory_before = used_memory(client)
        _, kinds_before = prefix_keys(client, fresh_env.prefix)

        log = ARTIFACTS / f"flood-{fresh_env.vhost}.log"
        flood = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.chaos.flood",
                HOSTILE,
                "--random",
                str(size["random"]),
                "--broadcasts",
                str(size["broadcasts"]),
                "--denied",
                str(size["denied"]),
                "--denied-to",
                HONEST[0],
                "--seconds",
                str(size["seconds"]),
            ],
            cwd=ROOT,
            env=fresh_env.env(),
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            text=True,
        )
        started = time.monotonic()

        async def scenario():
            polls = asyncio.create_task(
                hostile_long_polls(url, tokens[HOSTILE], lambda: flood.poll() is not None)
            )
            flooding = lambda: flood.poll() is None  # noqa: E731
            honest = await honest_exchange(url, tokens, flooding, started + size["seconds"] + 90)
            return honest, await asyncio.wait_for(polls, size["seconds"] + 60)

        (sent, got, honest_refusals), polls = asyncio.run(scenario())
        out, _ = flood.communicate(timeout=size["seconds"] + 60)
        elapsed = time.monotonic() - started
        tally = json.loads(out.strip().splitlines()[-1])

        # Every honest message was delivered.
        for me, other in (HONEST, tuple(reversed(HONEST))):
            assert len(sent[me]) >= HONEST_MESSAGES, (me, len(sent[me]), honest_refusals)
            assert sent[me] <= got[other], (me, len(sent[me] - got[other]))
        # The long-polls were answered (empty, after their wait), never refused.
        assert polls["answered"] >= LONG_POLLS and polls["error"] == 0, polls
        # Never-seen recipients stopped at the cap.
        random_ids = tally["random_ids"]
        unseen = client.scard(bus.runtime.keys.unseen(HOSTILE))
        assert unseen == MAX_UNSEEN
        assert random_ids["accepted"] == MAX_UNSEEN, random_ids
        # Until the cap was reached a send could only be told to wait for the rate bucket
        # (the broadcasts drain it too, so how often depends on timing); from then on the
        # cap refused every one, before the bucket was looked at.
        refused, after_cap = random_ids["refused"], random_ids["refused_after_last_accepted"]
        assert after_cap == {"unknown_agent": refused["unknown_agent"]}, random_ids
        assert set(refused) <= {"unknown_agent", "rate_limited"}, random_ids
        assert refused["unknown_agent"] > 0, random_ids
        assert tally["denied"]["refused"] == {"forbidden": tally["denied"]["attempted"]}
        registered = client.zrange(bus.runtime.keys.agents, 0, -1)
        assert set(registered) <= {HOSTILE, *HONEST}, registered

        # Let the worker deliver what was admitted, then measure.
        wait_for(lambda: sum(bus.stats().queue_depths.values()) == 0, 120, "the queues to drain")
        keys, kinds = prefix_keys(client, fresh_env.prefix)
        memory_after = used_memory(client)
        stored = sum(used for _, used in kinds.values())
        members = [
            len(m)
            for agent in (HOSTILE, *HONEST)
            for key, _ in bus.runtime.keys.histories(agent)
            for m in client.zrange(key, 0, -1)
        ]
        m = max(members)
        limit = budget(len(registered), unseen, len(registered), elapsed, m)
        inbox_keys = kinds.get("inbox", (0, 0))
        history_keys = kinds.get("history", (0, 0))
        agents_with_mail = len(registered) + unseen
        assert inbox_keys[0] <= 4 * agents_with_mail + 1, kinds  # + the sequence counter
        assert history_keys[0] <= 4 * agents_with_mail, kinds  # 2 halves, each with its bytes
        assert inbox_keys[1] <= agents_with_mail * INBOX_MAX * (m + INBOX_ENTRY), kinds
        assert stored <= limit, (stored, limit, kinds)
        assert memory_after - memory_before <= limit, (memory_after - memory_before, limit)

        # The trail still holds what was written before the flood.
        left = client.xrange(bus.runtime.keys.audit, min=before_trail[0], max=before_trail[-1])
        assert [entry_id for entry_id, _ in left] == before_trail

        result = {
            "case": "one hostile agent: never-seen ids, broadcasts, denied sends, long-polls",
            "seconds": round(elapsed, 1),
            "hostile": tally,
            "long_polls": dict(polls),
            "honest_sent": {k: len(v) for k, v in sent.items()},
            "honest_delivered": {k: len(v) for k, v in got.items()},
            "honest_refusals": dict(honest_refusals),
            "unseen": unseen,
            "keys": len(keys),
            "keys_by_kind": {k: v[0] for k, v in kinds.items()},
            "bytes_by_kind": {k: v[1] for k, v in kinds.items()},
            "keys_before": sum(v[0] for v in kinds_before.values()),
            "bytes_stored": stored,
            "used_memory_delta": memory_after - memory_before,
            "budget": limit,
            "message_bytes": m,
            "audit_entries": client.xlen(bus.runtime.keys.audit),
            "status_keys": kinds.get("status", (0, 0))[0],
        }
        path = RESULTS.parent / "flood-results.jsonl"
        path.parent.mkdir(exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"\n{json.dumps(result)}")
    finally:
        if "flood" in locals() and flood.poll() is None:
            flood.kill()
        client.close()
        bus.close()
        stop(server)
