"""The one settings class (pydantic-settings, prefix ``MESSAGE_BUS_``).

Entry points build it once and pass it down; library classes never read the environment.
"""

from __future__ import annotations

import logging
import re
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.errors import ConfigError

logger = logging.getLogger(__name__)

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_KEY_PREFIX_RE = re.compile(r"[A-Za-z0-9._:/-]{0,100}")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str) -> float:
    """``"100/s"`` -> 100.0 tokens per second; ``"0"`` or ``""`` disables limiting."""
    if text.strip() in ("", "0", "off", "none"):
        return 0.0
    match = _RATE.match(text)
    if not match:
        raise ConfigError(f"rate limit {text!r} is not like '100/s', '600/m' or '3600/h'")
    return float(match.group(1)) / _PER[match.group(2)]


MIN_SECRET_LENGTH = 32

SOLO_POOL_REFUSED = (
    "the solo pool is not supported: with late acks and prefetch 1 on RabbitMQ it stops "
    "taking messages after a few hundred (seen with raw Celery 5.7 too); for one delivery "
    "at a time use the threads pool with concurrency 1"
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESSAGE_BUS_", extra="ignore")

    mode: Literal["dev", "production"] = "dev"
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    secret: SecretStr | None = None
    secret_keys: SecretStr | None = Field(
        default=None, description='"kid:secret,kid2:secret2": the first signs, all verify'
    )
    agent_id: str | None = None
    admins: list[str] = Field(default_factory=list, description="agents allowed admin actions")
    tokens_file: Path | None = None
    acl_file: Path | None = None
    key_prefix: str = "msgbus:"
    state_dir: Path = Path.home() / ".local" / "state" / "msgbus"

    history_limit: int = Field(default=1000, ge=1, le=1_000_000)
    visibility_timeout: float = Field(default=300.0, gt=0)
    max_wait_seconds: float = Field(default=60.0, gt=0)
    dedup_window: int = Field(default=86_400, ge=1, description="seconds")
    status_retention: int = Field(default=7 * 86_400, ge=60, description="seconds")
    clock_skew: float = Field(default=300.0, gt=0, description="seconds a timestamp may differ")
    max_payload_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        # A task's JSON may hold a message three times over (escapes): it stays under
        # RabbitMQ's default max_message_size of 128 MiB.
        le=32 * 1024 * 1024,
    )
    max_task_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        le=32 * 1024 * 1024,
        description="bytes of messages one batch task carries at most: a batch past it goes "
        "as several tasks (RabbitMQ refuses a message over its max_message_size)",
    )
    max_payload_depth: int = Field(
        default=64, ge=1, le=200, description="levels of nesting a payload may have"
    )
    max_batch: int = Field(default=500, ge=1)
    max_topics_per_subscription: int = Field(default=100, ge=1)
    max_recipients: int = Field(
        default=10_000, ge=1, description="agents one topic or broadcast message may reach"
    )
    inbox_max: int = Field(
        default=10_000, ge=1, description="messages an inbox holds; more is inbox_full at send"
    )
    max_unseen_recipients: int = Field(
        default=100,
        ge=0,
        description="agents that never connected a sender may have mail waiting for "
        "(0: mail only for agents that connected or are declared)",
    )
    sender_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="the part of another agent's inbox and received history one sender may hold",
    )
    history_max_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="bytes of history kept per agent"
    )
    rate_limit: str = "100/s"
    trusted_rate_limit: str = Field(
        default="0", description="per-agent limit for trusted code (Python API, CLI, workers)"
    )
    rate_burst: int | None = Field(default=None, ge=1)
    send_linger_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="concurrent single sends of one process wait up to this long to share "
        "one delivery task per priority (bus/linger.py); 0: each its own task",
    )

    queue_type: Literal["classic", "quorum"] = "classic"
    queue_max_length: int | None = Field(default=None, ge=1)
    retry_backoff: float = Field(default=1.0, gt=0, description="first retry delay, seconds")
    retry_backoff_max: float = Field(default=60.0, gt=0)
    default_max_retries: int = Field(default=3, ge=0, le=100)
    max_dead_letter_replays: int = Field(default=3, ge=0)
    dead_letter_max_length: int = Field(default=100_000, ge=1, description="bus.dead_letter")
    dead_letter_max_bytes: int = Field(
        default=1 << 30, ge=1, description="bus.dead_letter, message bodies"
    )

    allowed_hosts: str = Field(
        default="", description="extra Host names the HTTP server answers for (comma-separated)"
    )
    allowed_origins: str = Field(
        default="", description="extra browser origins allowed (comma-separated, e.g. https://x)"
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="when set, /metrics wants 'Authorization: Bearer <it>'"
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9808, ge=0, le=65535, description="worker exporter; 0 = off")
    replay_interval: float = Field(default=300.0, gt=0, description="beat: replay dead letters")
    purge_interval: float = Field(default=3600.0, gt=0, description="beat: purge expired data")
    stats_interval: float = Field(default=15.0, gt=0, description="beat: queue stats")
    resend_interval: float = Field(
        default=10.0, gt=0, description="beat: publish sends their sender never confirmed"
    )
    history_retention: int = Field(default=30 * 86_400, ge=60, description="seconds")
    task_events: bool = Field(
        default=False,
        description="Celery task events from the start "
        "(Flower also switches worker events on when it connects)",
    )
    flower_auth: SecretStr | None = None
    worker_concurrency: int = Field(default=4, ge=1)
    express_worker: bool = Field(
        default=False, description="this worker serves bus.critical and bus.high first"
    )
    mcp_profile: Literal["core", "full"] = Field(default="core", description="MCP tool set")
    mcp_processes: int = Field(
        default=1,
        ge=0,
        le=64,
        description="processes of the MCP HTTP server on its one address (0: one per core)",
    )
    mcp_sessions_per_agent: int = Field(
        default=16, ge=1, le=10_000, description="open HTTP MCP sessions an agent may hold"
    )
    mcp_session_idle_seconds: float = Field(
        default=1800.0, gt=0, le=86_400, description="an idle HTTP MCP session ends after this"
    )
    mcp_modern: bool = Field(
        default=False, description="stdio MCP: also serve the 2026-07-28 era (no channel)"
    )
    log_level: str = Field(default="WARNING", description="log level of msgbus commands")
    ready_file: Path | None = Field(
        default=None, description="a worker or beat touches it once ready (set by `msgbus up`)"
    )
    worker_pool: Literal["threads", "prefork", "gevent", "eventlet"] = "threads"
    redis_min_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="replicas that must confirm a delivery (Redis WAIT) before its broker "
        "task is acked; admissions and acks wait for them too (see bus/replication.py)",
    )
    redis_replica_timeout: float = Field(
        default=1.0,
        gt=0,
        le=4.0,  # below the 5 s Redis socket timeout, so WAIT answers before the socket gives up
        description="seconds a write waits for MESSAGE_BUS_REDIS_MIN_REPLICAS replicas",
    )
    broker_timeout: float = Field(
        default=10.0,
        gt=0,
        description="seconds a broker call (a publish's confirm, a channel's open or close) "
        "may take before the bus gives up on that node and takes the next broker URL "
        "(a node that stopped answering keeps its socket open)",
    )
    broker_api_url: str | None = Field(
        default=None,
        description="RabbitMQ management API for Flower's broker tab; default: the first "
        "broker URL's host, port 15672",
    )

    @field_validator("secret", "secret_keys", "flower_auth", "metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `MESSAGE_BUS_SECRET=` (empty) must not become a valid, empty signing key.
        return None if value in ("", None) else value

    @field_validator("worker_pool", mode="before")
    @classmethod
    def _no_solo_pool(cls, value: object) -> object:
        if value == "solo":
            raise ValueError(SOLO_POOL_REFUSED)
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix_ends_with_colon(cls, value: str) -> str:
        # The prefix starts every key and every pub/sub pattern: a glob character in it
        # ("*?[]\\") would make the push listener's pattern match nothing (no push, ever),
        # and a brace would break the per-agent hash tags.
        if not _KEY_PREFIX_RE.fullmatch(value):
            raise ValueError(
                f"key prefix {value!r}: letters, digits, '.', '_', '-', '/' and ':' only, "
                "at most 100 characters"
            )
        return value if value.endswith(":") else value + ":"

    @field_validator("rate_limit", "trusted_rate_limit")
    @classmethod
    def _rate_parses(cls, value: str) -> str:
        parse_rate(value)
        return value

    @cached_property
    def signing_keys(self) -> list[tuple[str, bytes]]:
        """[(kid, secret)], the first one signs; dev mode generates one when none is set.
        Production mode refuses a secret shorter than MIN_SECRET_LENGTH."""
        keys = self._signing_keys()
        if self.mode == "production":
            for kid, secret in keys:
                if len(secret) < MIN_SECRET_LENGTH:
                    raise ConfigError(
                        f"the secret of key {kid!r} is {len(secret)} characters; production "
                        f"mode needs at least {MIN_SECRET_LENGTH} (e.g. `openssl rand -hex 32`)"
                    )
        return keys

    def _signing_keys(self) -> list[tuple[str, bytes]]:
        if self.secret_keys is not None:
            keys = []
            for part in self.secret_keys.get_secret_value().split(","):
                kid, sep, secret = part.strip().partition(":")
                if not sep or not kid or not secret:
                    raise ConfigError(
                        "MESSAGE_BUS_SECRET_KEYS must look like 'kid1:secret1,kid2:secret2'"
                    )
                keys.append((kid, secret.encode()))
            return keys
        if self.secret is not None:
            return [("k1", self.secret.get_secret_value().encode())]
        if self.mode == "production":
            raise ConfigError(
                "no secret: set MESSAGE_BUS_SECRET or MESSAGE_BUS_SECRET_KEYS (production mode)"
            )
        return [("dev", self._dev_secret())]

    def _dev_secret(self) -> bytes:
        # Kept in the state dir so every local process (CLI, worker, MCP) shares it.
        path = self.state_dir / "dev-secret"
        if path.exists():
            return path.read_bytes().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_hex(32).encode()
        path.write_bytes(secret)
        path.chmod(0o600)
        logger.warning(
            "dev mode and no MESSAGE_BUS_SECRET: generated a dev secret in %s; "
            "set MESSAGE_BUS_SECRET (and MESSAGE_BUS_MODE=production) for real use",
            path,
        )
        return secret

    @property
    def tokens_path(self) -> Path:
        """The HTTP MCP server's tokens file (MESSAGE_BUS_TOKENS_FILE, else in the state dir)."""
        return self.tokens_file or self.state_dir / "tokens.json"

    @property
    def allowed_host_list(self) -> list[str]:
        return [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]

    @property
    def allowed_origin_list(self) -> list[str]:
        return [o.strip() for o in self.allowed_origins.split(",") if o.strip()]

    @property
    def rate_per_second(self) -> float:
        return parse_rate(self.rate_limit)

    @property
    def trusted_rate_per_second(self) -> float:
        return parse_rate(self.trusted_rate_limit)

    @property
    def send_lease_seconds(self) -> float:
        """How long a send with its own id or dedup key holds that key between admission and
        the broker's confirm before a retry may take it over (scripts.ADMIT): a lingering
        publish with one confirm timeout and some slack. A send that outlives it is safe
        (both copies go out under one id, delivered once); a shorter lease only makes a
        crashed sender's retry wait less."""
        return self.send_linger_ms / 1000 + self.broker_timeout + 2.0
