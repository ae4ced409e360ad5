"""Which signing keys the stored messages still need (for retiring a key safely).

A message stays readable while a key that verifies it (and decrypts its payload) is in
MESSAGE_BUS_SECRET_KEYS; `key_usage` counts, per key id, the messages that need it in every
inbox, every history and the dead letters.
"""

from __future__ import annotations

from typing import Any

import orjson

from bus.deadletters import DeadLetterQueue
from bus.redis_conn import redis_errors


def key_usage(runtime: Any, dead_letters: int = 10_000) -> dict[str, int]:
    """kid -> how many stored messages need it: signed with it, or a payload encrypted with
    it, in any inbox, history or the dead letters. A retired key may leave
    MESSAGE_BUS_SECRET_KEYS once its count is 0 (see docs/operations.md, key rotation)."""
    counts: dict[str, int] = {}

    def count(text: str) -> None:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        signature = data.get("signature")
        kid = signature.get("kid") if isinstance(signature, dict) else None
        if isinstance(kid, str):
            counts[kid] = counts.get(kid, 0) + 1
        payload = data.get("payload")
        if isinstance(payload, str) and payload.startswith("aesgcm:"):
            enc_kid = payload.split(":", 2)[1]
            if enc_kid != kid:
                counts[enc_kid] = counts.get(enc_kid, 0) + 1

    client, k = runtime.redis, runtime.keys
    with redis_errors("count the keys stored messages need"):
        for agent in client.zrange(k.agents, 0, -1):
            for _, text in client.hscan_iter(k.inbox(agent).body, count=500):
                count(text)
            for history, _ in k.histories(agent):
                for text, _ in client.zscan_iter(history, count=500):
                    count(text)
    for letter in DeadLetterQueue(runtime).peek(dead_letters):
        if letter.message is not None:
            count(orjson.dumps(letter.message).decode())
    return counts
