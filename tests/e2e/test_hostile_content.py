"""Hostile content through every entrance: the Python API, the `msgbus` CLI, MCP over stdio
and over streamable HTTP (the `mcp` package's client), for direct, topic, broadcast and
batch sends. Every payload of the corpus (tests/support/hostile.py) is delivered equal, as
JSON, to what was sent, or refused at send with the problem named; nothing stays `queued`
and nothing ends in the dead letters. One worker, one HTTP server and the stdio sessions
are shared by the module."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from bus.tokens import TokenFile
from tests.support.cliforks import CliForks
from tests.support.entrances import BROADCASTS, Cli, Mcp, PythonApi, Refusal, msgbus
from tests.support.hostile import (
    DELIVERABLE,
    DELIVERABLE_BY_NAME,
    ECHOABLE,
    EMPTY,
    JSON_REFUSED,
    KEYS,
    MCP_REFUSED,
    REFUSED,
    TAGS,
    LoopThread,
    describe,
    exactly_equal,
    matches,
)
from tests.support.mcp import http, stdio
from tests.support.processes import start_echo_agent
from tests.support.waiting import wait_for
from tests.support.web import start_http_server

pytestmark = pytest.mark.timeout(600)

SETTLED = ("delivered", "read", "acked")


# -- the shared stack --------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(module_env, worker):
    client = module_env.bus()
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_url(module_env, worker, tmp_path_factory):
    tokens_path = tmp_path_factory.mktemp("hostile") / "tokens.json"
    tokens = TokenFile(tokens_path)
    issued = {name: tokens.create(name) for name in ("http-sender", "http-reader", "http-ops")}
    proc, url = start_http_server(
        module_env,
        "mcp-http-hostile",
        tokens_path,
        "--profile",
        "full",
        up_within=60,
        MESSAGE_BUS_ADMINS='["http-ops"]',
    )
    yield url, issued
    proc.terminate()
    proc.wait(20)


@pytest.fixture(scope="module")
def mcp_clients(module_env, http_url):
    url, issued = http_url
    loop = LoopThread()
    clients = loop.open(
        {
            "stdio-sender": lambda: stdio(module_env, "stdio-sender", "full"),
            "stdio-reader": lambda: stdio(module_env, "stdio-reader", "full"),
            "http-sender": lambda: http(url, issued["http-sender"]),
            "http-reader": lambda: http(url, issued["http-reader"]),
            "http-ops": lambda: http(url, issued["http-ops"]),
        }
    )
    yield loop, clients
    loop.close()


@pytest.fixture(scope="module")
def cli_forks(module_env):
    """The CLI's sends and reads: each a `msgbus` process of its own, forked from one that
    has the CLI imported (tests/support/cliforks.py), so a payload costs a fork, not the
    interpreter's start and imports (as do the dead-letter checks); the entrances' fixture
    subscribes its reader with `python -m msgbus` itself."""
    forks = CliForks(module_env.env())
    yield forks
    forks.close()


@pytest.fixture(scope="module")
def entrances(cli_forks, module_env, api, mcp_clients):
    loop, clients = mcp_clients
    made = {
        "python": PythonApi(api, "py-sender", "py-reader", "hostile/py"),
        "cli": Cli(module_env, "cli-sender", "cli-reader", "hostile/cli", run=cli_forks.run),
        "stdio": Mcp(
            "stdio",
            loop,
            clients["stdio-sender"],
            clients["stdio-reader"],
            "stdio-sender",
            "stdio-reader",
            "hostile/stdio",
        ),
        "http": Mcp(
            "http",
            loop,
            clients["http-sender"],
            clients["http-reader"],
            "http-sender",
            "http-reader",
            "hostile/http",
        ),
    }
    # Each reader subscribes through its own entrance (which also registers it, so the
    # broadcasts of every entrance reach it).
    api.subscribe("py-reader", ["hostile/py"])
    out = msgbus(module_env, "subscribe", "cli-reader", "hostile/cli")
    assert out.returncode == 0, out.stderr
    for name in ("stdio", "http"):
        entrance = made[name]
        entrance.tool(entrance.reader_client, "subscribe", {"topics": [entrance.topic]})
    return made


KINDS = [
    (entrance, kind)
    for entrance in ("python", "cli", "stdio", "http")
    for kind in ("direct", "topic", "broadcast", "batch")
    if not (entrance == "cli" and kind == "batch")
]
# The CLI is a process per send: all of the corpus goes direct, a cross-section of it to
# topics and broadcasts.
CLI_SAMPLE = {name for name, _ in TAGS[-2:]} | {
    "uint64 max",
    "int64 min",
    "negative zero",
    "smallest subnormal",
    "NUL",
    "astral plane",
    "zero-width joiner family",
    "line and paragraph separators",
    "empty string",
    "null",
    "string of a tag",
    "escaped-surrogate text",
    "path-like keys",
    "64 nested mixed",
    "ascii string at the cap",
}
# Direct: all but what only repeats a shape the CLI reads the same way (JSON text in, the
# payload checks after): the key and empty-value groups keep a few each.
CLI_DIRECT = (
    {name for name, _ in DELIVERABLE}
    - {
        name
        for name, _ in KEYS + EMPTY
        if name not in ("empty key", "path-like keys", "empty string", "null", "false")
    }
    - {"wide and shallow", "long key"}
)
BIG = {"ascii string at the cap", "4-byte characters at the cap"}


def corpus_for(entrance: str, kind: str) -> list[tuple[str, Any]]:
    cases = DELIVERABLE
    if entrance == "cli":
        sample = CLI_SAMPLE if kind != "direct" else CLI_DIRECT
        cases = [c for c in cases if c[0] in sample]
    if kind == "broadcast":  # a broadcast is stored once per agent: one big one is enough
        cases = [c for c in cases if c[0] not in BIG or c[0] == "ascii string at the cap"]
    return cases


def final_status(api: Any, message_id: str, timeout: float) -> Any:
    """The message's status once it is dead or acked; fails with the last one seen."""
    deadline = time.monotonic() + timeout
    while True:
        status = api.status(message_id)
        if status.status.value in ("dead", "acked", "expired"):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"{message_id} did not end within {timeout}s; last status: {status!r}")
        time.sleep(0.1)


def settled_everywhere(api: Any, cli: CliForks, ids: list[str]) -> None:
    """No message of `ids` is still queued or retrying, and none is a dead letter (asked of
    the Python API and of `msgbus dlq list`)."""
    statuses = {i: api.status(i).status.value for i in ids}
    unsettled = {i: s for i, s in statuses.items() if s not in SETTLED}
    assert unsettled == {}, unsettled
    dead = {d.id for d in api.dead_letters(limit=1000)} & set(ids)
    assert dead == set(), dead
    listed = cli.run("dlq", "list", "--json", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    assert {d["id"] for d in json.loads(listed.stdout)} & set(ids) == set()


@pytest.mark.parametrize(("entrance", "kind"), KINDS, ids=[f"{e}-{k}" for e, k in KINDS])
def test_every_deliverable_payload_arrives_equal_to_what_was_sent(
    entrances, api, cli_forks, entrance, kind
):
    door = entrances[entrance]
    cases = corpus_for(entrance, kind)
    if kind == "batch":
        ids = door.send_batch([payload for _, payload in cases])
    else:
        # The CLI is a process per send: a few at a time (each connects, sends and exits).
        with ThreadPoolExecutor(4 if entrance == "cli" else 1) as pool:
            ids = list(pool.map(lambda case: door.send(kind, case[1]), cases))
    got = door.collect(set(ids))

    wrong = [
        f"{name}: sent {describe(sent)}, got {describe(got[i])}"
        for (name, sent), i in zip(cases, ids, strict=True)
        if len(got[i]) != 1 or not exactly_equal(sent, got[i][0])
    ]
    assert wrong == [], "\n".join(wrong)
    strangers = set(door.received) - door.mine - BROADCASTS
    assert strangers == set(), f"{door.reader} read messages never sent to it: {strangers}"
    if kind == "broadcast" and entrance == "python":
        # The sender is not among a broadcast's recipients.
        own = []
        while batch := api.read(door.sender, limit=100):
            own += [m.id for m in batch if m.id in ids]
            api.ack(door.sender, [m.id for m in batch])
        assert own == []
    settled_everywhere(api, cli_forks, ids)


REFUSAL_KINDS = [(e, k) for e, k in KINDS if k != "batch"]


@pytest.mark.parametrize(
    ("entrance", "kind"), REFUSAL_KINDS, ids=[f"{e}-{k}" for e, k in REFUSAL_KINDS]
)
def test_every_undeliverable_payload_is_refused_at_send_with_its_problem_named(
    entrances, api, module_env, entrance, kind
):
    door = entrances[entrance]
    cases = {"python": REFUSED, "cli": JSON_REFUSED}.get(entrance, MCP_REFUSED)
    if entrance == "cli" and kind != "direct":
        cases = [r for r in cases if r.name in ("2^64", "lone surrogate", "65 nested lists")]

    def verdict(case: Any) -> str | None:
        try:
            if entrance == "cli":
                door.send_text(kind, case.json_text)
            else:
                door.send(kind, case.payload)
        except Refusal as refusal:
            if not matches(case.problem, refusal.text):
                return f"{case.name}: refused without naming it: {refusal.text.strip()}"
            return None
        except Exception as exc:  # noqa: BLE001 - a crash is a finding, reported with the rest
            return f"{case.name}: {type(exc).__name__}: {str(exc)[:300]}"
        return f"{case.name}: accepted"

    # The CLI is a process per send: a few at a time, as for the deliverable corpus.
    with ThreadPoolExecutor(4 if entrance == "cli" else 1) as pool:
        wrong = [w for w in pool.map(verdict, cases) if w is not None]
    assert wrong == [], "\n".join(w[:400] for w in wrong)

    # Positive control: the same door, kind and reader take a plain message, and nothing of
    # the refused ones went out before it (the reader's inbox is FIFO).
    before = set(door.received)
    control = door.send(kind, {"control": entrance, "kind": kind})
    got = door.collect({control})
    assert exactly_equal({"control": entrance, "kind": kind}, got[control][0])
    new = set(got) - before - {control}
    assert new <= BROADCASTS, f"refused sends were delivered: {new}"


BATCH_DOORS = ["python", "stdio", "http"]


@pytest.mark.parametrize("entrance", BATCH_DOORS)
def test_a_batch_with_one_undeliverable_payload_is_refused_whole_naming_the_message(
    entrances, entrance
):
    door = entrances[entrance]
    cases = REFUSED if entrance == "python" else MCP_REFUSED
    marker = {"half-done": entrance}
    wrong = []
    for case in cases:
        try:
            door.send_batch([marker, case.payload])
        except Refusal as refusal:
            if not (matches(case.problem, refusal.text) and "messages[1]" in refusal.text):
                wrong.append(f"{case.name}: {refusal.text.strip()}")
        except Exception as exc:  # noqa: BLE001 - a crash is a finding, reported with the rest
            wrong.append(f"{case.name}: {type(exc).__name__}: {str(exc)[:300]}")
        else:
            wrong.append(f"{case.name}: accepted")
    before = set(door.received)
    [control] = door.send_batch([{"control": "batch"}])
    got = door.collect({control})
    assert [p for i in set(got) - before for p in got[i] if p == marker] == [], "half-done batch"
    assert wrong == [], "batch not refused whole, naming the message and the problem:\n" + (
        "\n".join(w[:400] for w in wrong)
    )


# -- JSON text no Python client writes -------------------------------------------------------


def raw_session(url: str, token: str) -> dict[str, str]:
    """A streamable-HTTP MCP session opened by hand; returns the headers of its requests."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    response = httpx.post(f"{url}/mcp", json=init, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    headers |= {"mcp-protocol-version": "2025-06-18"}
    if "mcp-session-id" in response.headers:
        headers["mcp-session-id"] = response.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    httpx.post(f"{url}/mcp", json=note, headers=headers, timeout=30)
    return headers


def raw_send(url: str, headers: dict[str, str], to: str, literal: str) -> tuple[int, dict]:
    """tools/call send_message with `literal` spliced into the JSON text as the payload."""
    body = (
        '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"send_message",'
        f'"arguments":{{"to":"{to}","type":"command","payload":{literal}}}}}}}'
    )
    response = httpx.post(f"{url}/mcp", content=body, headers=headers, timeout=30)
    text = response.text
    if text.startswith("event:") or "\ndata: " in text or text.startswith("data: "):
        text = next(line[6:] for line in text.splitlines() if line.startswith("data: "))
    return response.status_code, json.loads(text)


RAW_REFUSED = [
    ("NaN", "not a JSON number"),
    ("Infinity", "not a JSON number"),
    ("-Infinity", "not a JSON number"),
    ("1e400", "not a JSON number"),
    ("-1e400", "not a JSON number"),
    ("[1, NaN]", "not a JSON number"),
    ("1" + "0" * 400, "outside the 64-bit range"),
    ("18446744073709551616", "outside the 64-bit range"),
    ("-9223372036854775809", "outside the 64-bit range"),
]
RAW_UNPARSABLE = ['"\\ud800"', '{"\\udfff": 1}', '["a\\udc00b"]', '"\\ude00\\ud83d"']
RAW_DELIVERED = [
    "-0",
    "-0.0",
    "1E2",
    "5e-324",
    "18446744073709551615",
    "-9223372036854775808",
    '"\\u0000"',
    '"\\ud83d\\ude00"',
    '"\\u2028"',
    '{"__type__": "bytes", "__value__": "AA=="}',
]


def test_raw_json_rpc_literals_are_refused_named_or_delivered_exactly(http_url, api):
    """What a client that is not Python may write: NaN, Infinity, 1e400 and integers past
    64 bits are refused with the problem named (never rounded or turned into null); lone
    surrogate escapes are refused by the JSON-RPC parser; the rest arrives exactly."""
    url, issued = http_url
    headers = raw_session(url, issued["http-sender"])
    reader = "raw-reader"
    wrong = []
    for literal, problem in RAW_REFUSED:
        status, reply = raw_send(url, headers, reader, literal)
        result = reply.get("result") or {}
        text = (result.get("content") or [{}])[0].get("text", "")
        if not (result.get("isError") and problem in text):
            wrong.append(f"{literal[:40]}: {status} {json.dumps(reply)[:300]}")
    for literal in RAW_UNPARSABLE:
        status, reply = raw_send(url, headers, reader, literal)
        if not (status == 400 and reply.get("error", {}).get("code") == -32700):
            wrong.append(f"{literal}: {status} {json.dumps(reply)[:300]}")
    sent = {}
    for literal in RAW_DELIVERED:
        status, reply = raw_send(url, headers, reader, literal)
        result = reply.get("result") or {}
        if result.get("isError") or "structuredContent" not in result:
            wrong.append(f"{literal}: not delivered: {json.dumps(reply)[:300]}")
            continue
        sent[result["structuredContent"]["id"]] = json.loads(literal)
    assert wrong == [], "\n".join(wrong)

    got: dict[str, Any] = {}

    def arrived() -> bool:
        messages = api.read(reader, limit=50, wait=1)
        api.ack(reader, [m.id for m in messages])
        got.update((m.id, m.payload) for m in messages)
        return sent.keys() <= got.keys()

    wait_for(arrived, 60, "the raw sends", interval=0)
    assert set(got) == set(sent), "a refused raw send was delivered"
    unequal = [f"{sent[i]!r} -> {got[i]!r}" for i in sent if not exactly_equal(sent[i], got[i])]
    assert unequal == []


# -- worker agents ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_agent(module_env, worker):
    proc, log = start_echo_agent(module_env, "agent-echo-hostile")
    yield log
    proc.terminate()
    proc.wait(20)


def test_the_echo_agent_answers_hostile_payloads_with_them_intact(api, echo_agent):
    wrong = []
    for name, payload in ECHOABLE:
        response = api.request({"from": "echo-asker", "to": "echo", "payload": payload}, timeout=30)
        if not exactly_equal({"echo": payload, "from": "echo"}, response.payload):
            wrong.append(f"{name}: sent {describe(payload)}, echoed {describe(response.payload)}")
    assert wrong == [], "\n".join(wrong)


def test_the_echo_agent_answers_tag_shaped_payloads_over_mcp(mcp_clients, echo_agent):
    loop, clients = mcp_clients
    wrong = []
    for name, payload in TAGS:
        result = loop.run(
            clients["stdio-sender"].call_tool(
                "request", {"to": "echo", "payload": payload, "timeout_seconds": 30}
            )
        )
        got = (result.structured_content or {}).get("response") or {}
        if result.is_error or not exactly_equal(
            {"echo": payload, "from": "echo"}, got.get("payload")
        ):
            wrong.append(f"{name}: {describe(result.structured_content or result.content)}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize(
    ("name", "payload", "limit"),
    [
        (
            "64 nested lists",
            DELIVERABLE_BY_NAME["64 nested lists"],
            "MESSAGE_BUS_MAX_PAYLOAD_DEPTH",
        ),
        (
            "ascii string at the cap",
            DELIVERABLE_BY_NAME["ascii string at the cap"],
            "MESSAGE_BUS_MAX_PAYLOAD_BYTES",
        ),
    ],
    ids=["depth", "size"],
)
def test_a_request_whose_reply_the_bus_refuses_ends_dead_with_the_limit_named(
    api, echo_agent, name, payload, limit
):
    """A payload at a limit is deliverable, but the echo's reply wraps it one level deeper
    (or a few bytes longer): the reply is refused. The request must end known: dead, with
    the limit named, never left `delivered` as if all were well."""
    receipt = api.send_message(
        {
            "from": "echo-asker",
            "to": "echo",
            "type": "request",
            "payload": payload,
            "metadata": {"max_retries": 1},
        }
    )
    status = final_status(api, receipt.id, 20)
    assert status.status.value == "dead", status
    assert limit in (status.error or ""), status
    # The worker records the death, then rejects the task into the dead letters.
    [letter] = wait_for(
        lambda: [d for d in api.dead_letters() if d.id == receipt.id], 20, "its dead letter"
    )
    assert limit in (letter.error or ""), letter
