"""Signing, encryption and compression without any service."""

from __future__ import annotations

import base64
import tracemalloc
import zlib

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.codec import Codec, canonical_json
from bus.errors import LimitExceeded, SecurityError

MIB = 1024 * 1024


@pytest.fixture
def codec():
    return Codec([("k1", b"secret-one")], MIB)


def sample():
    return {
        "id": "m1",
        "from": "a",
        "to": "b",
        "payload": {"n": 1},
        "metadata": {"priority": "normal"},
    }


def test_canonical_json_is_sorted_compact_utf8():
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


@pytest.mark.parametrize(
    "change",
    [
        lambda w: w["payload"].update(n=2),
        lambda w: w["metadata"].update(priority="high"),
        lambda w: w.update({"from": "mallory"}),
    ],
)
def test_any_change_after_signing_fails_verification(codec, change):
    wire = codec.sign(sample())
    codec.verify(wire)
    change(wire)
    with pytest.raises(SecurityError, match="does not match"):
        codec.verify(wire)


def test_unknown_key_id_and_missing_signature_fail(codec):
    other = Codec([("rogue", b"x")], MIB).sign(sample())
    with pytest.raises(SecurityError, match="unknown key"):
        codec.verify(other)
    with pytest.raises(SecurityError, match="no signature"):
        codec.verify(sample())


def test_rotation_new_key_signs_and_old_signatures_still_verify():
    old = Codec([("k1", b"old")], MIB)
    rotated = Codec([("k2", b"new"), ("k1", b"old")], MIB)
    rotated.verify(old.sign(sample()))
    assert rotated.sign(sample())["signature"]["kid"] == "k2"


@pytest.mark.parametrize("compression", ["none", "gzip", "brotli"])
@pytest.mark.parametrize("encrypted", [False, True])
def test_payload_round_trips(codec, compression, encrypted):
    payload = {"text": "hello " * 50, "n": [1, 2, 3]}
    encoded = codec.encode_payload("m1", payload, compression, encrypted)
    if encrypted:
        assert "hello" not in encoded
    assert codec.decode_payload("m1", encoded, compression, encrypted) == payload


def test_tampered_ciphertext_and_wrong_message_id_are_refused(codec):
    encoded = codec.encode_payload("m1", {"secret": 1}, "none", True)
    scheme, kid, b64 = encoded.split(":", 2)
    raw = bytearray(base64.b64decode(b64))
    raw[20] ^= 1
    tampered = f"{scheme}:{kid}:{base64.b64encode(bytes(raw)).decode()}"
    with pytest.raises(SecurityError) as excinfo:
        codec.decode_payload("m1", tampered, "none", True)
    assert excinfo.value.reason == "decrypt_failed"
    with pytest.raises(SecurityError):
        codec.decode_payload("other-id", encoded, "none", True)


def test_oversize_payload_names_the_limit(codec):
    with pytest.raises(LimitExceeded, match="MESSAGE_BUS_MAX_PAYLOAD_BYTES"):
        codec.encode_payload("m1", "x" * MIB, "none", False)


@pytest.mark.parametrize("compression", ["gzip", "brotli"])
def test_compression_bombs_are_refused_with_low_peak_memory(codec, compression):
    zeros = b"0" * (10 * MIB)
    bomb = zlib.compress(zeros, 9, wbits=31) if compression == "gzip" else brotli.compress(zeros)
    del zeros
    encoded = f"{compression}::{base64.b64encode(bomb).decode()}"
    tracemalloc.start()
    with pytest.raises(LimitExceeded):
        codec.decode_payload("m1", encoded, compression, False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * MIB


@pytest.mark.parametrize(
    "garbage", ["gzip::!!!", "gzip::" + base64.b64encode(b"nope").decode(), "plain"]
)
def test_corrupt_encodings_are_security_errors_not_crashes(codec, garbage):
    with pytest.raises(SecurityError):
        codec.decode_payload("m1", garbage, "gzip", False)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=60)
@given(
    payload=json_values,
    compression=st.sampled_from(["none", "gzip", "brotli"]),
    encrypted=st.booleans(),
)
def test_any_json_payload_round_trips_through_every_encoding(payload, compression, encrypted):
    codec = Codec([("k1", b"s")], MIB)
    encoded = codec.encode_payload("m", payload, compression, encrypted)
    assert codec.decode_payload("m", encoded, compression, encrypted) == payload
