"""JSON values the bus carries exactly, and the one check every message passes at send.

Every payload is delivered equal, as JSON, to what was sent. A value that could not be (an
integer past 64 bits, NaN or Infinity, a lone surrogate, a non-string key, a Python object
JSON has no form for, nesting past the limit) is refused at send with the path of the first
offending part; nothing on the way ever changes it. `encode` is the fast path (orjson, and
a C-level comparison of the round trip); the slow walk runs only to name a problem, or when
a value has more containers than the depth limit.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from bus.errors import ValidationError

# orjson (every encoder and decoder of the bus) carries integers of 64 bits exactly.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def encode(value: Any, *, max_depth: int, where: str = "payload") -> bytes:
    """`value` as JSON bytes, or ValidationError naming what cannot travel intact."""
    try:
        raw = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise ValidationError(problem(value, max_depth, where) or f"{where}: {exc}") from None
    # Fewer containers than the limit cannot nest past it; NaN -> null, tuples, datetimes
    # and other lossy encodings show up as a round trip that is not equal.
    shallow = raw.count(b"[") + raw.count(b"{") <= max_depth
    if shallow and orjson.loads(raw) == value:
        return raw
    found = problem(value, max_depth, where)
    if found is not None:
        raise ValidationError(found)
    return raw


def dumps(value: Any, where: str) -> bytes:
    """orjson.dumps for values whose parts are typed already (a validated message): only
    what orjson itself refuses (a lone surrogate in a string field) is named and refused."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise ValidationError(problem(value, 1_000, where) or f"{where}: {exc}") from None


def problem(value: Any, max_depth: int, where: str = "payload") -> str | None:
    """The first part of `value` that JSON cannot carry exactly, described; None if none."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                return (
                    f"{path}: integer {_short(item)} is outside the 64-bit range the bus carries "
                    "exactly (-2^63 .. 2^64-1); send it as a string"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                return (
                    f"{path}: {item} is not a JSON number (NaN and Infinity have no JSON form); "
                    "send null or a string"
                )
        elif isinstance(item, str):
            bad = _lone_surrogate(item)
            if bad is not None:
                return f"{path}: {bad}"
        elif isinstance(item, dict | list):
            if depth + 1 > max_depth:
                return (
                    f"{path}: nests deeper than {max_depth} levels (MESSAGE_BUS_MAX_PAYLOAD_DEPTH)"
                )
            if isinstance(item, list):
                stack.extend((x, f"{path}[{i}]", depth + 1) for i, x in enumerate(item))
                continue
            for key, x in item.items():
                if not isinstance(key, str):
                    return (
                        f"{path}: key {key!r} is a {type(key).__name__}; "
                        "JSON object keys are strings"
                    )
                bad = _lone_surrogate(key)
                if bad is not None:
                    return f"{path}: key {bad}"
                stack.append((x, f"{path}.{key}", depth + 1))
        else:
            return (
                f"{path}: a {type(item).__name__} is not a JSON value (use objects, arrays, "
                "strings, numbers, booleans or null)"
            )
    return None


def loads_exact(text: str, what: str) -> Any:
    """Parses JSON text from a person or a script (CLI arguments) without losing anything:
    integers stay exact (orjson would turn 2^64 into a float) and NaN/Infinity are refused,
    so the send-side check sees what was typed."""

    def refuse(name: str) -> Any:
        raise ValidationError(f"{what}: {name} is not JSON (no NaN or Infinity in JSON)")

    def one_value_per_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # Python keeps the last of a repeated key: what was typed first would vanish.
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise ValidationError(f"{what}: key {key!r} is given twice in one object")
            obj[key] = value
        return obj

    try:
        return json.loads(text, parse_constant=refuse, object_pairs_hook=one_value_per_key)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValidationError(f"{what} nests too deeply to read") from None


def _lone_surrogate(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"string has a lone surrogate (U+{ord(text[exc.start]):04X}) at character "
            f"{exc.start}, which is not valid Unicode; pair it or drop it"
        )
    return None


def _short(number: int) -> str:
    try:
        digits = str(number)
    except ValueError:  # past Python's own limit on int -> str conversion
        return f"of {number.bit_length()} bits"
    return digits if len(digits) <= 24 else f"{digits[:12]}...({len(digits)} digits)"
