"""Message integrity and payload encoding: sign/verify, compress, encrypt.

Order on send: compress -> encrypt -> sign. On receive: verify (before touching the
payload) -> decrypt -> decompress with the size cap. An encoded payload travels as the
string ``"<scheme>:<kid>:<base64>"``; ``metadata`` says which transforms were applied.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import zlib
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import brotli
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bus import jsonvalue
from bus.errors import LimitExceeded, SecurityError

ALG = "HMAC-SHA256"
_CHUNK = 64 * 1024


def canonical_json(data: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8: the bytes that get signed."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


class Codec:
    """Holds the keys (built once) and applies the transforms to wire dicts."""

    def __init__(
        self,
        keys: Sequence[tuple[str, bytes]],
        max_payload_bytes: int,
        max_payload_depth: int = 64,
    ) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = dict(keys)
        self.signing_kid = self._signing_kid = keys[0][0]
        self.max_payload_bytes = max_payload_bytes
        self.max_payload_depth = max_payload_depth

    def fingerprints(self) -> dict[str, str]:
        """kid -> a short fingerprint that tells secrets apart without revealing them."""
        return {
            kid: hmac.new(secret, b"msgbus key fingerprint v1", hashlib.sha256).hexdigest()[:12]
            for kid, secret in self._keys.items()
        }

    # -- signing ---------------------------------------------------------------------

    def _mac(self, kid: str, data: dict[str, Any]) -> str:
        body = {k: v for k, v in data.items() if k != "signature"}
        return hmac.new(self._keys[kid], canonical_json(body), hashlib.sha256).hexdigest()

    def sign(self, data: dict[str, Any]) -> dict[str, Any]:
        """Adds ``signature`` to a wire dict (in place) and returns it."""
        kid = self._signing_kid
        data["signature"] = {"kid": kid, "alg": ALG, "value": self._mac(kid, data)}
        return data

    def verify(self, data: dict[str, Any]) -> None:
        """Raises SecurityError(reason="bad_signature") unless the signature checks out."""
        signature = data.get("signature")
        if not isinstance(signature, dict):
            raise SecurityError("message has no signature", reason="bad_signature")
        kid, value = signature.get("kid"), signature.get("value")
        if signature.get("alg") != ALG or kid not in self._keys or not isinstance(value, str):
            raise SecurityError(
                f"message signed with an unknown key or algorithm (kid={kid!r})",
                reason="bad_signature",
            )
        if not hmac.compare_digest(self._mac(kid, data), value):
            raise SecurityError("message signature does not match", reason="bad_signature")

    def is_valid(self, data: dict[str, Any]) -> bool:
        try:
            self.verify(data)
        except SecurityError:
            return False
        return True

    # -- payload encoding --------------------------------------------------------------

    @cached_property
    def _aead(self) -> dict[str, AESGCM]:
        return {
            kid: AESGCM(
                HKDF(
                    algorithm=hashes.SHA256(), length=32, salt=None, info=b"msgbus payload v1"
                ).derive(secret)
            )
            for kid, secret in self._keys.items()
        }

    def encode_payload(
        self,
        message_id: str,
        payload: Any,
        compression: str,
        encrypted: bool,
        where: str = "payload",
    ) -> Any:
        """Plain JSON payload -> what travels (unchanged when no transform is asked).
        Refuses, naming the part (`where`), a payload JSON cannot carry exactly
        (bus.jsonvalue)."""
        raw = jsonvalue.encode(payload, max_depth=self.max_payload_depth, where=where)
        if len(raw) > self.max_payload_bytes:
            raise LimitExceeded(
                f"{where} is {len(raw)} bytes; the limit is {self.max_payload_bytes} bytes "
                "(MESSAGE_BUS_MAX_PAYLOAD_BYTES)",
                limit="max_payload_bytes",
                size=len(raw),
            )
        if compression == "none" and not encrypted:
            return payload
        if compression == "gzip":
            raw = zlib.compress(raw, 6, wbits=31)
        elif compression == "brotli":
            raw = brotli.compress(raw, quality=5)
        if encrypted:
            kid = self._signing_kid
            nonce = os.urandom(12)
            raw = nonce + self._aead[kid].encrypt(nonce, raw, message_id.encode())
            return f"aesgcm:{kid}:{base64.b64encode(raw).decode()}"
        return f"{compression}::{base64.b64encode(raw).decode()}"

    def decode_payload(
        self, message_id: str, payload: Any, compression: str, encrypted: bool
    ) -> Any:
        """What travelled -> plain JSON payload; refuses tampering and bombs."""
        if compression == "none" and not encrypted:
            return payload
        if not isinstance(payload, str) or payload.count(":") < 2:
            raise SecurityError("encoded payload is not a bus-encoded string", reason="corrupt")
        scheme, kid, b64 = payload.split(":", 2)
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError as exc:
            raise SecurityError("encoded payload is not valid base64", reason="corrupt") from exc
        if encrypted:
            if scheme != "aesgcm" or kid not in self._aead or len(raw) < 28:
                raise SecurityError(
                    f"cannot decrypt payload (scheme {scheme!r}, key {kid!r})",
                    reason="decrypt_failed",
                )
            try:
                raw = self._aead[kid].decrypt(raw[:12], raw[12:], message_id.encode())
            except InvalidTag as exc:
                raise SecurityError(
                    "payload failed authenticated decryption (tampered or wrong key)",
                    reason="decrypt_failed",
                ) from exc
        if compression == "gzip":
            raw = self._inflate_gzip(raw)
        elif compression == "brotli":
            raw = self._inflate_brotli(raw)
        if len(raw) > self.max_payload_bytes:
            raise self._too_big()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SecurityError("decoded payload is not JSON", reason="corrupt") from exc

    def _too_big(self) -> LimitExceeded:
        return LimitExceeded(
            f"payload inflates past the {self.max_payload_bytes}-byte limit "
            "(MESSAGE_BUS_MAX_PAYLOAD_BYTES); refused without inflating it",
            limit="max_payload_bytes",
        )

    def _inflate_gzip(self, raw: bytes) -> bytes:
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header, auto-detected
        out = bytearray()
        data = raw
        try:
            while data and not inflater.eof:
                out += inflater.decompress(data, self.max_payload_bytes + 1 - len(out))
                if len(out) > self.max_payload_bytes:
                    raise self._too_big()
                data = inflater.unconsumed_tail
        except zlib.error as exc:
            raise SecurityError("gzip payload is corrupt", reason="corrupt") from exc
        return bytes(out)

    def _inflate_brotli(self, raw: bytes) -> bytes:
        inflater = brotli.Decompressor()
        out = bytearray()
        try:
            out += inflater.process(raw, output_buffer_limit=_CHUNK)
            while not inflater.is_finished():
                if len(out) > self.max_payload_bytes:
                    raise self._too_big()
                chunk = inflater.process(b"", output_buffer_limit=_CHUNK)
                if not chunk and inflater.can_accept_more_data():
                    raise SecurityError("brotli payload is truncated", reason="corrupt")
                out += chunk
        except brotli.error as exc:
            raise SecurityError("brotli payload is corrupt", reason="corrupt") from exc
        if len(out) > self.max_payload_bytes:
            raise self._too_big()
        return bytes(out)
