"""Which signing keys the running processes hold, and the send-side check built on it.

Every long-running process (workers, beat, MCP servers, worker agents) announces itself in
Redis every `ANNOUNCE_EVERY` seconds: its kind, host, pid, the key id it signs with and the
key ids it verifies, each with a short fingerprint (an HMAC of a fixed text under the key:
it tells keys apart without revealing them). From that:
- `msgbus health` shows per process kind who signs and verifies with what, and warns when
  a worker cannot verify what a sender signs (e.g. a dev secret generated under another
  HOME), or when one key id stands for two different secrets;
- a send is refused, with that explanation, when workers are live and none of them could
  verify the sender's signature: the message would only die as `bad_signature` after a
  "queued" receipt.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import orjson
from pydantic import BaseModel, Field

from bus.codec import Codec
from bus.errors import BusUnavailable, SecurityError
from bus.keys import Keys
from bus.redis_conn import redis_errors

logger = logging.getLogger(__name__)

ANNOUNCE_EVERY = 30.0
LIVE_FOR = 3 * ANNOUNCE_EVERY  # an announcement older than this is a process gone
FORGET_AFTER = 3600.0
CHECK_EVERY = 10.0  # how long a sender trusts what it last read of the workers' keys
VERIFYING_KINDS = frozenset({"worker", "express", "agent"})


class ProcessKeys(BaseModel):
    kind: str
    host: str
    pid: int
    signs: str = Field(description="kid:fingerprint of the key it signs with")
    verifies: list[str] = Field(description="kid:fingerprint of each key it verifies")
    seen_ms: int = 0

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.host}:{self.pid}"


def describe_keys(codec: Codec, kind: str) -> ProcessKeys:
    prints = codec.fingerprints()
    return ProcessKeys(
        kind=kind,
        host=socket.gethostname(),
        pid=os.getpid(),
        signs=f"{codec.signing_kid}:{prints[codec.signing_kid]}",
        verifies=[f"{kid}:{fp}" for kid, fp in prints.items()],
    )


class Keyring:
    def __init__(self, redis: Any, keys: Keys, codec: Codec, clock: Any) -> None:
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self.clock = clock
        self._verifiers: set[str] | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    # -- announcing --------------------------------------------------------------------

    def announce(self, kind: str) -> None:
        me = describe_keys(self.codec, kind)
        now = self.clock.now_ms()
        me.seen_ms = now
        k = self.keys
        with redis_errors("announce this process"):
            stale = self.redis.zrangebyscore(k.processes, "-inf", now - FORGET_AFTER * 1000)
            pipe = self.redis.pipeline(transaction=True)
            pipe.zadd(k.processes, {me.id: now})
            pipe.hset(k.process_keys, me.id, me.model_dump_json())
            if stale:
                pipe.zrem(k.processes, *stale)
                pipe.hdel(k.process_keys, *stale)
            pipe.execute()

    def announce_forever(self, kind: str, stop: threading.Event | None = None) -> threading.Thread:
        """Announces now and then every ANNOUNCE_EVERY seconds from a daemon thread, until
        `stop` is set (a process's own announcer never stops: it ends with the process)."""
        stopped = stop or threading.Event()

        def loop() -> None:
            while not stopped.is_set():
                try:
                    self.announce(kind)
                except BusUnavailable as exc:
                    logger.debug("not announced: %s", exc)
                stopped.wait(ANNOUNCE_EVERY)

        thread = threading.Thread(target=loop, name=f"msgbus-announce-{kind}", daemon=True)
        thread.start()
        return thread

    def live(self) -> list[ProcessKeys]:
        now = self.clock.now_ms()
        k = self.keys
        with redis_errors("list the running processes"):
            ids = self.redis.zrangebyscore(k.processes, now - LIVE_FOR * 1000, "+inf")
            raw = self.redis.hmget(k.process_keys, ids) if ids else []
        out = []
        for text in raw:
            try:
                out.append(ProcessKeys.model_validate(orjson.loads(text)))
            except (orjson.JSONDecodeError, ValueError, TypeError):
                continue  # a foreign or damaged entry: not ours to judge
        return sorted(out, key=lambda p: (p.kind, p.host, p.pid))

    # -- checking --------------------------------------------------------------------------

    def check_verifiable(self) -> None:
        """Refuses to send what no live worker could verify (SecurityError naming both
        sides). Without Redis, or with no live worker, there is nothing to compare: the
        send goes ahead."""
        verifiers = self._live_verifiers()
        if not verifiers:
            return
        signs = f"{self.codec.signing_kid}:{self.codec.fingerprints()[self.codec.signing_kid]}"
        if signs in verifiers:
            return
        raise SecurityError(
            f"no running worker can verify what this process signs (key {signs}); the workers "
            f"verify {', '.join(sorted(verifiers))}. Give every process the same "
            "MESSAGE_BUS_SECRET or MESSAGE_BUS_SECRET_KEYS (a dev secret is per HOME); "
            "nothing was sent",
            reason="unknown_key",
        )

    def _live_verifiers(self) -> set[str]:
        if time.monotonic() - self._checked_at < CHECK_EVERY and self._verifiers is not None:
            return self._verifiers
        with self._lock:
            try:
                live = [p for p in self.live() if p.kind in VERIFYING_KINDS]
            except BusUnavailable:
                live = []
            self._verifiers = {key for p in live for key in p.verifies}
            self._checked_at = time.monotonic()
            return self._verifiers


def key_warnings(processes: list[ProcessKeys]) -> list[str]:
    """What `msgbus health` warns about the keys of the running processes."""
    warnings: list[str] = []
    verifiers = {key for p in processes if p.kind in VERIFYING_KINDS for key in p.verifies}
    if not any(p.kind in VERIFYING_KINDS for p in processes):
        return warnings
    for p in processes:
        if p.signs not in verifiers:
            warnings.append(
                f"{p.kind} on {p.host} (pid {p.pid}) signs with {p.signs}, which no running "
                "worker verifies: its messages would be dead-lettered as bad_signature"
            )
    by_kid: dict[str, set[str]] = {}
    for p in processes:
        for key in [p.signs, *p.verifies]:
            kid, _, fingerprint = key.partition(":")
            by_kid.setdefault(kid, set()).add(fingerprint)
    for kid, prints in sorted(by_kid.items()):
        if len(prints) > 1:
            warnings.append(
                f"key id {kid!r} stands for {len(prints)} different secrets "
                f"(fingerprints {', '.join(sorted(prints))}): give every process the same one"
            )
    return warnings
