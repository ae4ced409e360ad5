"""A payload either travels exactly or is refused at send, naming the part that cannot."""

from __future__ import annotations

import datetime
import math

import orjson
import pytest

from bus.errors import ValidationError
from bus.jsonvalue import INT_MAX, INT_MIN, encode, loads_exact


@pytest.mark.parametrize(
    "payload",
    [
        {"__type__": "bytes", "__value__": "aGk="},
        {"__class__": "os.system", "py/object": "x", "$type": "System.Object"},
        [INT_MIN, INT_MAX, 2**63 - 1, -0.0, 5e-324, 1.7976931348623157e308, 0.1],
        {"": "", "a.b[0]": [], "k": {}, "n": None, "f": False, "z": 0},
        "\u0000\uffff\U0001f600\u2028\u202e",
        "x" * 1000,
    ],
)
def test_a_json_value_is_encoded_as_it_is(payload):
    assert orjson.loads(encode(payload, max_depth=64)) == payload


def nest(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def test_nesting_up_to_the_limit_travels_and_one_level_more_is_refused():
    assert orjson.loads(encode(nest(64), max_depth=64)) == nest(64)
    with pytest.raises(ValidationError, match="nests deeper than 64 levels"):
        encode(nest(65), max_depth=64)
    # Many containers side by side are not deep.
    wide = [[i] for i in range(500)]
    assert orjson.loads(encode(wide, max_depth=2)) == wide


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"big": 2**64}, "payload.big: integer 18446744073709551616 is outside the 64-bit"),
        ([1, -(2**63) - 1], r"payload\[1\]: integer"),
        ({"n": 10**400}, "payload.n: integer 100000000000"),
        ({"x": math.nan}, "payload.x: nan is not a JSON number"),
        ({"x": [math.inf]}, r"payload.x\[0\]: inf is not a JSON number"),
        ({"s": "a\ud800b"}, "payload.s: string has a lone surrogate .U.D800. at character 1"),
        ({"\udc00": 1}, "payload: key string has a lone surrogate"),
        ({1: "one"}, "payload: key 1 is a int; JSON object keys are strings"),
        ({"when": datetime.datetime(2026, 1, 1)}, "payload.when: a datetime is not a JSON value"),
        ({"t": (1, 2)}, "payload.t: a tuple is not a JSON value"),
        ({"b": b"raw"}, "payload.b: a bytes is not a JSON value"),
    ],
)
def test_what_json_cannot_carry_is_refused_naming_the_part(payload, named):
    with pytest.raises(ValidationError, match=named):
        encode(payload, max_depth=64)


def test_an_integer_too_long_to_print_is_still_named():
    with pytest.raises(ValidationError, match="integer of 33220 bits"):
        encode(10**10000, max_depth=64)


def test_command_line_json_keeps_big_integers_exact_and_refuses_nan():
    assert loads_exact('{"n": 18446744073709551616}', "--payload") == {"n": 2**64}
    with pytest.raises(ValidationError, match="--payload: NaN is not JSON"):
        loads_exact('{"n": NaN}', "--payload")
    with pytest.raises(ValidationError, match="--payload is not valid JSON"):
        loads_exact("{nope", "--payload")
    assert loads_exact('"\\ud800"', "--payload") == "\ud800"  # refused later, at send


def test_command_line_json_refuses_a_key_given_twice_in_one_object():
    """Python keeps the last of a repeated key: the first value would vanish unseen."""
    with pytest.raises(ValidationError, match="--payload: key 'a' is given twice"):
        loads_exact('{"a": 1, "a": 2}', "--payload")
    with pytest.raises(ValidationError, match="key 'k' is given twice"):
        loads_exact('[{"x": {"k": 1, "k": 1}}]', "--message")
    # the control: the same key in different objects is no repeat
    assert loads_exact('{"a": {"a": 1}, "b": [{"a": 2}]}', "--payload") == {
        "a": {"a": 1},
        "b": [{"a": 2}],
    }
