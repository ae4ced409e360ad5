"""The hostile-content corpus and what its tests share: payloads the bus must deliver equal
(serializer tags, 64-bit edges, Unicode edges, nesting at the limit, empty values, strings
shaped like JSON, sizes at the cap, odd keys) and payloads it must refuse at send with the
problem named (past 64 bits, NaN, lone surrogates, non-string keys, Python objects, nesting
or size one past the limit).

`exactly_equal` is the comparison: as JSON, with ints staying ints, floats floats, and the
sign of -0.0 kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

CAP = 1024 * 1024  # MESSAGE_BUS_MAX_PAYLOAD_BYTES, default
MAX_DEPTH = 64  # MESSAGE_BUS_MAX_PAYLOAD_DEPTH, default


def nest(levels: int, leaf: Any = 0, kind: str = "list") -> Any:
    """`levels` containers around `leaf`: nest(2) == [[0]]; kind "dict" or "mixed"."""
    value = leaf
    for i in range(levels):
        if kind == "list" or (kind == "mixed" and i % 2):
            value = [value]
        else:
            value = {"k": value}
    return value


def sized_string(total_bytes: int, unit: str = "x") -> str:
    """A string whose JSON encoding (quotes included, UTF-8) is `total_bytes` long, made of
    `unit` (1- or 4-byte characters) padded with 'x'."""
    unit_bytes = len(unit.encode())
    body = total_bytes - 2
    return unit * (body // unit_bytes) + "x" * (body % unit_bytes)


TAGS = [
    ("kombu bytes tag", {"__type__": "bytes", "__value__": "aGVsbG8="}),
    ("kombu datetime tag", {"__type__": "datetime", "__value__": "2024-01-01T00:00:00+00:00"}),
    ("kombu decimal tag", {"__type__": "decimal", "__value__": "3.14"}),
    ("kombu uuid tag", {"__type__": "uuid", "__value__": "0b2a8d6e-3c4b-4e1f-9a7d-2f1e0c9b8a77"}),
    ("unknown tag", {"__type__": "nope", "__value__": 1}),
    ("tag with no value", {"__type__": "bytes"}),
    ("python __class__", {"__class__": "os.system", "args": ["id"]}),
    ("json.net $type", {"$type": "System.IO.FileInfo, System.IO", "fileName": "/etc/passwd"}),
    (
        "jsonpickle py/object",
        {"py/object": "os.system", "py/reduce": [{"py/function": "os.system"}]},
    ),
    ("__reduce__", {"__reduce__": ["os.system", ["id"]]}),
    ("celery-ish task body", [["a"], {"b": 1}, {"callbacks": None, "chain": None}]),
    ("bus-shaped inner message", {"id": "x", "from": "mallory", "signature": {"kid": "k1"}}),
    (
        "tags nested in lists and dicts",
        [
            {"__type__": "bytes", "__value__": "AA=="},
            {"a": {"__type__": "datetime", "__value__": "x"}, "b": [{"py/object": "x"}]},
            [[{"$type": "t"}, {"__class__": "c"}]],
        ],
    ),
]

NUMBERS = [
    ("int64 max", 2**63 - 1),
    ("int64 min", -(2**63)),
    ("uint64 max", 2**64 - 1),
    ("2^53 + 1", 2**53 + 1),
    ("zero int", 0),
    ("largest double", 1e308),
    ("max double", 1.7976931348623157e308),
    ("smallest subnormal", 5e-324),
    ("negative zero", -0.0),
    ("0.1", 0.1),
    ("0.1 + 0.2", 0.1 + 0.2),
    ("float one", 1.0),
    ("numbers mixed in a list", [2**64 - 1, -(2**63), -0.0, 5e-324, 1e308, 1.0, 1]),
]

UNICODE = [
    ("emoji", "\U0001f600\U0001f4a9"),
    ("combining marks", "e\u0301 a\u0308\u0323 Z\u0351\u0361\u0334"),
    ("right-to-left", "\u202eabc\u202c \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627"),
    ("zero-width joiner family", "\U0001f468\u200d\U0001f469\u200d\U0001f467"),
    ("NUL", "a\u0000b"),
    ("U+FFFF and U+FFFE", "\uffff\ufffe"),
    ("astral plane", "\U0001d11e \U00010348 \U0010ffff"),
    ("line and paragraph separators", "a\u2028b\u2029c"),
    ("BOM", "\ufeffstart"),
    ("control characters", "".join(chr(i) for i in range(32)) + "\x7f"),
    ("unicode keys", {"\U0001f600": 1, "e\u0301": 2, "\u0000": 3, "\u2028": 4}),
]

EMPTY = [
    ("empty string", ""),
    ("empty list", []),
    ("empty object", {}),
    ("null", None),
    ("false", False),
    ("true", True),
    ("zero", 0),
    ("nested empties", {"a": [], "b": {}, "c": "", "d": None, "e": [[], [{}]]}),
]

JSON_SHAPED = [
    ("string of an object", '{"a": 1}'),
    ("string of a tag", '{"__type__": "bytes", "__value__": "AA=="}'),
    ("string of null", "null"),
    ("string of a list", "[1, 2]"),
    ("quoted string", '"quoted"'),
    ("escaped-surrogate text", "\\ud800"),
    ("escaped NUL text", "\\u0000"),
    ("backslashes", "C:\\path\\to\\file\\"),
    ("string of a huge number", "1" + "0" * 400),
    ("string NaN", "NaN"),
]

KEYS = [
    ("empty key", {"": 1}),
    ("dotted key", {"a.b.c": 1, "a": {"b": {"c": 2}}}),
    ("path-like keys", {"/etc/passwd": 1, "../../x": 2, "a/b": 3, "C:\\x": 4}),
    ("json-pointer-ish keys", {"$ref": "#/definitions/x", "#": 1, "~0~1": 2}),
    ("prototype keys", {"__proto__": {"x": 1}, "constructor": {"prototype": 1}}),
    ("envelope-named keys", {"id": 1, "from": "root", "payload": {"metadata": {}}, "signature": 0}),
    ("long key", {"k" * 10_000: "v"}),
]

NESTING = [
    ("64 nested lists", nest(MAX_DEPTH)),
    ("64 nested objects", nest(MAX_DEPTH, kind="dict")),
    ("64 nested mixed", nest(MAX_DEPTH, "leaf", kind="mixed")),
    ("wide and shallow", [{} for _ in range(500)]),
]

SIZES = [
    ("ascii string at the cap", sized_string(CAP)),
    ("4-byte characters at the cap", sized_string(CAP, "\U0001f600")),
]

DELIVERABLE: list[tuple[str, Any]] = TAGS + NUMBERS + UNICODE + EMPTY + JSON_SHAPED + KEYS
DELIVERABLE += NESTING + SIZES
DELIVERABLE_BY_NAME = dict(DELIVERABLE)

# What stays small enough to echo back wrapped in a reply ({"echo": payload, ...}).
_AT_A_LIMIT = {name for name, _ in NESTING[:3] + SIZES}
ECHOABLE = [(name, p) for name, p in DELIVERABLE if name not in _AT_A_LIMIT]


@dataclass(frozen=True)
class Refused:
    name: str
    payload: Any
    problem: str  # a regex the error text must match
    json_text: str | None  # how a JSON client writes it; None: no JSON form at all


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, allow_nan=True)


REFUSED = [
    Refused("2^64", 2**64, "outside the 64-bit range", _text(2**64)),
    Refused("-2^63 - 1", -(2**63) - 1, "outside the 64-bit range", _text(-(2**63) - 1)),
    Refused("10^400 as an int", 10**400, "outside the 64-bit range", "1" + "0" * 400),
    Refused("2^64 deep inside", {"a": [1, {"b": 2**64}]}, r"payload\.a\[1\]\.b: integer", None),
    Refused("NaN", math.nan, "(?i)nan.*(not a JSON number|not JSON)", "NaN"),
    Refused("Infinity", math.inf, "(?i)inf.*(not a JSON number|not JSON)", "Infinity"),
    Refused("lone surrogate", "ok \ud800 no", "lone surrogate", _text("ok \ud800 no")),
    Refused("lone surrogate key", {"\udfff": 1}, "lone surrogate", _text({"\udfff": 1})),
    Refused("int key", {1: "a"}, "JSON object keys are strings", None),
    Refused("None key", {None: "a"}, "JSON object keys are strings", None),
    Refused("bytes", b"raw", "bytes is not a JSON value", None),
    Refused("datetime", datetime.datetime(2024, 1, 1), "datetime is not a JSON value", None),
    Refused("Decimal", decimal.Decimal("1.1"), "Decimal is not a JSON value", None),
    Refused("set", {1, 2}, "set is not a JSON value", None),
    Refused("UUID", uuid.UUID(int=1), "UUID is not a JSON value", None),
    Refused("object()", object(), "object is not a JSON value", None),
    Refused(
        "65 nested lists",
        nest(MAX_DEPTH + 1),
        f"nests deeper than {MAX_DEPTH} levels \\(MESSAGE_BUS_MAX_PAYLOAD_DEPTH\\)",
        _text(nest(MAX_DEPTH + 1)),
    ),
    Refused(
        "65 nested objects",
        nest(MAX_DEPTH + 1, kind="dict"),
        "MESSAGE_BUS_MAX_PAYLOAD_DEPTH",
        _text(nest(MAX_DEPTH + 1, kind="dict")),
    ),
    Refused(
        "one byte over the cap",
        sized_string(CAP + 1),
        f"limit is {CAP} bytes \\(MESSAGE_BUS_MAX_PAYLOAD_BYTES\\)",
        _text(sized_string(CAP + 1)),
    ),
    Refused(
        "4-byte characters over the cap",
        sized_string(CAP + 1, "\U0001f600"),
        "MESSAGE_BUS_MAX_PAYLOAD_BYTES",
        _text(sized_string(CAP + 1, "\U0001f600")),
    ),
]
JSON_REFUSED = [r for r in REFUSED if r.json_text is not None]
# What the `mcp` client library cannot write as JSON at all: it turns NaN and Infinity into
# null (pydantic's default) and fails on a lone surrogate (the failure also takes its session
# down). Raw JSON-RPC text carries these to the server instead (test_hostile_content).
NOT_BY_MCP_CLIENT = {"NaN", "Infinity", "lone surrogate", "lone surrogate key"}
MCP_REFUSED = [r for r in JSON_REFUSED if r.name not in NOT_BY_MCP_CLIENT]


def json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def exactly_equal(sent: Any, got: Any) -> bool:
    """`got` equals `sent` after a JSON round trip, with no type drift: an int stays an int
    (of the same value), a float a float (-0.0 keeps its sign), and objects have the same
    keys."""
    expected = json_round_trip(sent)
    return _same(expected, got)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def describe(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def matches(problem: str, text: str) -> bool:
    return re.search(problem, text) is not None


class LoopThread:
    """An asyncio loop in a thread holding MCP clients open across a module's tests: the
    clients are entered and left in one long-lived task (anyio's cancel scopes need that);
    tests submit calls from the main thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._stop: asyncio.Event | None = None
        self._holder: asyncio.Future[None] | None = None

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open(self, factories: dict[str, Callable[[], Any]], timeout: float = 120) -> dict:
        async def start() -> dict:
            ready: asyncio.Future[dict] = self.loop.create_future()
            self._stop = asyncio.Event()
            self._holder = asyncio.ensure_future(self._hold(factories, ready))
            return await ready

        return self.run(start(), timeout)

    async def _hold(self, factories: dict[str, Callable[[], Any]], ready: asyncio.Future) -> None:
        assert self._stop is not None
        try:
            async with contextlib.AsyncExitStack() as stack:
                clients = {}
                for name, factory in factories.items():
                    clients[name] = await stack.enter_async_context(factory())
                ready.set_result(clients)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def close(self, timeout: float = 60) -> None:
        if self._stop is not None and self._holder is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            holder = self._holder

            async def left() -> None:
                with contextlib.suppress(Exception):
                    await holder

            self.run(left(), timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
