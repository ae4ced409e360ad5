"""A worker agent for tests that counts its handler's runs per message in Redis (the
side effect a handler must not repeat): `msgbus agent run tests.support.counting_agent:agent`.
A request whose payload has `fail_runs: n` fails its first n runs (a downstream that is back
after a while); `hold_s: s` keeps each run busy that long (at most 10 s)."""

from __future__ import annotations

import time
from typing import Any

from workers.agent import WorkerAgent

agent = WorkerAgent("counter")


def runs_key(prefix: str, message_id: str) -> str:
    return f"{prefix}test-runs:{message_id}"


@agent.on("request")
def count(message: Any) -> dict[str, Any]:
    bus = agent.bus
    runs = bus.runtime.redis.incr(runs_key(bus.settings.key_prefix, message.id))
    payload = message.payload if isinstance(message.payload, dict) else {}
    time.sleep(min(float(payload.get("hold_s", 0)), 10.0))
    if runs <= int(payload.get("fail_runs", 0)):
        raise RuntimeError(f"downstream unavailable (run {runs})")
    return {"runs": runs}
