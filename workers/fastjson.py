"""A faster decoder for the worker's JSON task messages (orjson), same results as kombu's.

kombu decodes every task body with the standard library's json and an object hook; for a
signed bus message that is a fifth of the worker's own time per delivery. orjson decodes the
same documents several times faster. Anything orjson reads differently falls back to kombu's
decoder: kombu's tagged values (``{"__type__": ...}``: datetimes, UUIDs, decimals), NaN and
Infinity, integers past 64 bits. Only the decoder changes; what the worker publishes is still
encoded by kombu.
"""

from __future__ import annotations

from typing import Any

import orjson
from kombu.serialization import registry
from kombu.utils import json as kombu_json

CONTENT_TYPE = "application/json"
_TAGGED = b'"__type__"'


def decode(data: bytes | bytearray | memoryview | str) -> Any:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _TAGGED not in raw:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # NaN, huge integers...: kombu's decoder says what they are (or why not)
    return kombu_json.loads(raw)


def install() -> None:
    """Makes `decode` the decoder of application/json in this process (idempotent)."""
    registry.register(
        "json", kombu_json.dumps, decode, content_type=CONTENT_TYPE, content_encoding="utf-8"
    )
