"""A hostile agent's flood, as its own process: `python -m tests.chaos.flood AGENT ...`.

It acts through the identity-bound handle the MCP tools act through (front door: the MCP
rate limit applies), in three loops at once, each bounded in count and in time:
- mail for `--random` never-seen agent ids (`r` + 12 hex digits);
- broadcasts (`--broadcasts`);
- sends the ACL denies (`--denied`, to `--denied-to`).
Prints one JSON object: what was accepted and every refusal by its error code.
"""

from __future__ import annotations

import argparse
import collections
import json
import secrets
import threading
import time
from typing import Any

from bus.client import MessageBus
from bus.errors import BusError
from bus.settings import Settings

PAYLOAD = "h" * 512


def loop(handle: Any, make: Any, count: int, deadline: float, tally: dict[str, Any]) -> None:
    """Sends until count or deadline; tallies refusals by code, and apart the refusals that
    came after the last accepted send (once a bound is reached, those are all its code)."""
    accepted, refused = 0, collections.Counter[str]()
    since_accepted = collections.Counter[str]()
    for i in range(count):
        if time.monotonic() > deadline:
            break
        try:
            handle.send(make(i))
            accepted += 1
            since_accepted.clear()
        except BusError as exc:
            refused[exc.code] += 1
            since_accepted[exc.code] += 1
    tally.update(
        accepted=accepted,
        refused=dict(refused),
        refused_after_last_accepted=dict(since_accepted),
        attempted=accepted + sum(refused.values()),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("agent")
    parser.add_argument("--random", type=int, default=5000)
    parser.add_argument("--broadcasts", type=int, default=2000)
    parser.add_argument("--denied", type=int, default=5000)
    parser.add_argument("--denied-to", default="nobody")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    bus = MessageBus(Settings())
    handle = bus.as_agent(args.agent, front_door=True)
    deadline = time.monotonic() + args.seconds
    loops = {
        "random_ids": (
            lambda i: {"to": f"r{secrets.token_hex(6)}", "payload": PAYLOAD},
            args.random,
        ),
        "broadcasts": (
            lambda i: {"to": "*", "type": "broadcast", "payload": PAYLOAD},
            args.broadcasts,
        ),
        "denied": (lambda i: {"to": args.denied_to, "payload": PAYLOAD}, args.denied),
    }
    tallies: dict[str, dict[str, Any]] = {name: {} for name in loops}
    started = time.monotonic()
    threads = [
        threading.Thread(target=loop, args=(handle, make, count, deadline, tallies[name]))
        for name, (make, count) in loops.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.seconds + 30)
    tallies["seconds"] = round(time.monotonic() - started, 1)  # type: ignore[assignment]
    bus.close()
    print(json.dumps(tallies), flush=True)


if __name__ == "__main__":
    main()
