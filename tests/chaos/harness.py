"""A Jepsen-style checker: the producer records every message it attempted and every one
whose send was confirmed; the consumer (a real agent reading and acking) records every
delivery. Messages are told apart by a token in their payload, so sends that leave the id
to the bus (as most clients do) are checked like sends that bring their own.

    lost       = confirmed, never delivered          (must be 0)
    duplicated = delivered more than once            (bounded by messages in flight)
    recovered  = delivered though never confirmed    (the send failed but the broker had it)
    unexpected = delivered but never attempted       (must be 0)
"""

from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.errors import BusError

CLIENT_RETRY_PAUSE = 0.2  # how long a client waits before trying the bus again

RESULTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "chaos-results.jsonl"


@dataclass
class Checker:
    case: str
    attempted: list[str] = field(default_factory=list)
    confirmed: set[str] = field(default_factory=set)
    ids: dict[str, str] = field(default_factory=dict)  # token -> id of its confirmed send
    delivered: list[str] = field(default_factory=list)
    send_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    started: float = field(default_factory=time.monotonic)
    fault_at: float | None = None
    healed_at: float | None = None
    recovered_at: float | None = None
    # When sends were first and last refused: how long the bus said "unavailable".
    refused: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # case-specific figures, recorded
    longest_send: float = 0.0  # the longest a client waited for one send (with its retries)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def send(self, bus: Any, message: dict[str, Any], retry_for: float = 0.0) -> None:
        """Sends once, or keeps retrying for a while as a client riding out an outage
        would: with the same id or dedup key (its token), which makes retries safe."""
        token = message["payload"]["token"]
        self.attempted.append(token)
        if retry_for and "id" not in message:
            message = {**message, "metadata": {**message["metadata"], "dedup_key": token}}
        started = time.monotonic()
        deadline = started + retry_for
        try:
            self._send(bus, message, token, deadline)
        finally:
            self.longest_send = max(self.longest_send, time.monotonic() - started)

    def _send(self, bus: Any, message: dict[str, Any], token: str, deadline: float) -> None:
        while True:
            try:
                receipt = bus.send_message(message)
            except BusError as exc:
                with self._lock:  # senders may share a checker
                    self.send_errors[exc.code] += 1
                self.refused.append(time.monotonic())
                if time.monotonic() < deadline:
                    time.sleep(CLIENT_RETRY_PAUSE)
                    continue
                return
            if receipt.status.value in ("queued", "duplicate"):
                self.confirmed.add(token)
                self.ids[token] = receipt.duplicate_of or receipt.id
            return

    def consume(self, bus: Any, agent: str, until: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until <= set(self.delivered):
            try:
                messages = bus.read(agent, limit=500, wait=0.5)
                if messages:
                    self.delivered.extend(m.payload["token"] for m in messages)
                    bus.ack(agent, [m.id for m in messages])
            except BusError:
                time.sleep(CLIENT_RETRY_PAUSE)  # the bus is (still) down: poll again
        self.recovered_at = time.monotonic()

    def counts(self) -> dict[str, Any]:
        seen = collections.Counter(self.delivered)
        attempted = set(self.attempted)
        result = {
            "case": self.case,
            "attempted": len(attempted),
            "confirmed": len(self.confirmed),
            "delivered": len(seen),
            "lost": len(self.confirmed - set(seen)),
            "duplicated": sum(n - 1 for n in seen.values() if n > 1),
            "recovered": len(set(seen) - self.confirmed),
            "unexpected": len(set(seen) - attempted),
            "send_errors": dict(self.send_errors),
        }
        if self.fault_at is not None and self.recovered_at is not None:
            result["recovery_s"] = round(self.recovered_at - (self.healed_at or self.fault_at), 2)
        if self.refused:
            refused = sorted(self.refused)
            result["refused_s"] = round(refused[-1] - refused[0], 2)
        if self.longest_send > 1:
            result["longest_send_s"] = round(self.longest_send, 2)
        return result | self.notes

    def record(self) -> dict[str, Any]:
        result = self.counts()
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps(result) + "\n")
        print(f"\n{json.dumps(result)}")
        return result


def in_background(fn: Any) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread
