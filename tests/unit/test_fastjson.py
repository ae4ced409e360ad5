"""The worker's orjson task-body decoder reads every document as kombu's own decoder does."""

from __future__ import annotations

import datetime
import math
import uuid
from decimal import Decimal

import pytest
from kombu.serialization import loads
from kombu.utils import json as kombu_json

from workers import fastjson


@pytest.mark.parametrize(
    "document",
    [
        [[{"id": "m1", "payload": {"a": [1, 2.5, None, True, "é"]}}], {}, {"callbacks": None}],
        {"nested": {"deep": [[], {}, ""]}},
        "just a string",
        12,
    ],
)
def test_plain_task_bodies_decode_exactly_as_kombu_decodes_them(document):
    body = kombu_json.dumps(document).encode()
    assert fastjson.decode(body) == kombu_json.loads(body)


def test_kombu_tagged_values_come_back_as_their_python_types():
    when = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)
    ident = uuid.uuid4()
    body = kombu_json.dumps([when, ident, Decimal("1.5")]).encode()
    assert fastjson.decode(body) == [when, ident, Decimal("1.5")]


def test_documents_orjson_refuses_fall_back_to_kombu():
    decoded = fastjson.decode(b"[NaN, 123456789012345678901234567890]")
    assert math.isnan(decoded[0]) and decoded[1] == 123456789012345678901234567890


def test_str_bytearray_and_memoryview_bodies_are_accepted():
    for body in ('{"a": 1}', bytearray(b'{"a": 1}'), memoryview(b'{"a": 1}')):
        assert fastjson.decode(body) == {"a": 1}


def test_malformed_json_is_still_an_error():
    with pytest.raises(ValueError):
        fastjson.decode(b'{"a": ')


def test_installed_decoder_serves_application_json_in_kombu():
    fastjson.install()
    assert loads(b'{"x": [1]}', "application/json", "utf-8") == {"x": [1]}
