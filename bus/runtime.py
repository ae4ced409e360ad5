"""The wiring of one process: settings -> Redis store, codec, broker, deliverer.

Everything is built on first use, so importing or constructing connects to nothing.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from bus.admission import Admission
from bus.broker import Broker
from bus.codec import Codec
from bus.delivery import Deliverer
from bus.keys import Keys
from bus.redis_conn import connect
from bus.replication import Replication
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
    def retention(self) -> Retention:
        s = self.settings
        return Retention(s.history_limit, s.status_retention, s.dedup_window)

    @cached_property
    def replication(self) -> Replication:
        s = self.settings
        return Replication(s.redis_min_replicas, s.redis_replica_timeout)

    @cached_property
    def store(self) -> RedisStore:
        return RedisStore(self.redis, self.keys, self.retention, self.replication)

    @cached_property
    def admission(self) -> Admission:
        return Admission(self.redis, self.keys, self.retention, self.replication)

    @cached_property
    def codec(self) -> Codec:
        return Codec(self.settings.signing_keys, self.settings.max_payload_bytes)

    @cached_property
    def broker(self) -> Broker:
        return Broker(self.settings)

    @cached_property
    def deliverer(self) -> Deliverer:
        return Deliverer(
            self.store,
            self.codec,
            clock_skew=self.settings.clock_skew,
            max_age=max(self.settings.dedup_window, self.settings.clock_skew),
        )

    def reset(self) -> None:
        """Drops connections (after a fork) so they are rebuilt in this process."""
        for name in ("redis", "store", "admission", "deliverer", "broker"):
            self.__dict__.pop(name, None)

    def close(self) -> None:
        client = self.__dict__.get("redis")
        if client is not None:
            client.close()
        self.reset()


def runtime_from_env() -> Runtime:
    return Runtime(Settings())
