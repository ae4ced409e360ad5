"""The wiring of one process: settings -> Redis store, codec, broker, deliverer.

Everything is built on first use, so importing or constructing connects to nothing.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from bus.admission import Admission
from bus.broker import Broker
from bus.clock import Clock
from bus.codec import Codec
from bus.delivery import Deliverer
from bus.handler_runs import HandlerRuns
from bus.keyring import Keyring
from bus.keys import Keys
from bus.redis_conn import connect, redis_errors
from bus.replication import Replication
from bus.scripts import ScriptRunner
from bus.settings import Settings
from bus.store import RedisStore, Retention


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()

    @cached_property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix)

    @cached_property
    def redis(self) -> Any:
        """redis.Redis with decode_responses=True (str results; see RedisStore)."""
        return connect(self.settings.redis_url)

    @cached_property
    def clock(self) -> Clock:
        """Redis's clock (see bus.clock): every time that decides something."""

        def redis_time() -> tuple[Any, Any]:
            with redis_errors("read Redis's clock"):
                seconds, micros = self.redis.time()
            return seconds, micros

        return Clock(redis_time, warn_skew=min(1.0, self.settings.clock_skew))

    @cached_property
    def retention(self) -> Retention:
        s = self.settings
        return Retention(
            s.history_limit,
            s.status_retention,
            s.dedup_window,
            s.history_max_bytes,
            s.inbox_max,
            s.max_unseen_recipients,
            s.sender_share,
            int(s.send_lease_seconds * 1000),
        )

    @cached_property
    def replication(self) -> Replication:
        s = self.settings
        return Replication(s.redis_min_replicas, s.redis_replica_timeout)

    @cached_property
    def scripts(self) -> ScriptRunner:
        """Every Lua call of this process (bus.scripts.runner), WAIT behind the writes the
        replication asks to confirm."""
        return ScriptRunner(self.redis, self.replication)

    @cached_property
    def store(self) -> RedisStore:
        return RedisStore(self.redis, self.keys, self.retention, self.clock, scripts=self.scripts)

    @cached_property
    def handler_runs(self) -> HandlerRuns:
        return HandlerRuns(self.redis, self.keys, self.retention, self.clock, scripts=self.scripts)

    @cached_property
    def admission(self) -> Admission:
        return Admission(self.redis, self.keys, self.retention, self.clock, scripts=self.scripts)

    @cached_property
    def codec(self) -> Codec:
        s = self.settings
        return Codec(s.signing_keys, s.max_payload_bytes, s.max_payload_depth)

    @cached_property
    def keyring(self) -> Keyring:
        return Keyring(self.redis, self.keys, self.codec, self.clock)

    @cached_property
    def broker(self) -> Broker:
        return Broker(self.settings)

    @cached_property
    def deliverer(self) -> Deliverer:
        return Deliverer(self.store, self.codec, self.clock, self.broker, self.settings)

    def reset(self) -> None:
        """Drops connections (after a fork) so they are rebuilt in this process."""
        for name in ("redis", "scripts", "store", "admission", "deliverer", "broker", "keyring"):
            self.__dict__.pop(name, None)

    def close(self) -> None:
        client = self.__dict__.get("redis")
        if client is not None:
            client.close()
        self.reset()


def runtime_from_env() -> Runtime:
    return Runtime(Settings())
