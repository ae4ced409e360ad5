"""Lazy, pooled Redis connections, and the one place Redis errors become bus errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlparse

import redis
from redis.sentinel import Sentinel

from bus.breaker import BREAKERS
from bus.errors import BusError, BusUnavailable, ConfigError

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def connect(url: str, *, socket_timeout: float = 5.0) -> redis.Redis:
    """A client whose pool connects on first command (nothing connects at import or here).

    ``redis+sentinel://host:26379,host2:26379/mymaster/0`` asks Sentinel for the master.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 30,
    }
    if url.startswith("redis+sentinel://"):
        return _sentinel_master(url, options)
    return redis.Redis.from_url(url, **options)


def _sentinel_master(url: str, options: dict[str, Any]) -> redis.Redis:
    parsed = urlparse(url)
    hosts = []
    for part in parsed.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = part.partition(":")
        hosts.append((host or "127.0.0.1", int(port or 26379)))
    path = [p for p in parsed.path.split("/") if p]
    if not path:
        raise ConfigError(f"sentinel URL {url!r} needs a service name: .../mymaster/0")
    service, db = path[0], int(path[1]) if len(path) > 1 else 0
    password = parsed.password or parse_qs(parsed.query).get("password", [None])[0]
    sentinel = Sentinel(hosts, socket_timeout=options["socket_timeout"])
    return sentinel.master_for(service, db=db, password=password, **options)


@contextmanager
def redis_errors(action: str) -> Iterator[None]:
    """Turns connection-level Redis failures into BusUnavailable naming the action, and
    fails at once while the Redis circuit breaker is open."""
    breaker = BREAKERS["redis"]
    if not breaker.allow():
        raise BusUnavailable(
            f"bus unavailable: Redis cannot be reached (circuit open after repeated failures; "
            f"next try in {breaker.retry_in():.1f}s) while trying to {action}",
            component="redis",
        )
    try:
        yield
    except _CONNECTION_ERRORS as exc:
        breaker.failure()
        raise BusUnavailable(
            f"bus unavailable: Redis cannot be reached while trying to {action} ({exc})",
            component="redis",
        ) from exc
    except BusError:
        raise  # a nested call already judged it
    except Exception:
        breaker.success()  # Redis answered; the error is something else
        raise
    else:
        breaker.success()
