"""The one way the bus runs a Lua script.

Every script call goes through `ScriptRunner.call` or `ScriptRunner.many`, so there is one
place where:

- calls go out as bare EVALSHA, packed by hiredis, one round trip per call or batch (a
  redis-py Script on a pipeline sends SCRIPT EXISTS first: one round trip more);
- a script Redis has lost (a restart, a failover, SCRIPT FLUSH) is loaded and the calls
  that met NOSCRIPT are sent once more, the loads riding in front of them: one round trip;
- a connection that broke (Redis closed it, timed out, was demoted by a failover) is
  dropped and the round trip made once more on a fresh one, as redis-py retries its own
  commands: the scripts are written to be run again (see each one's contract);
- with replicas required, WAIT rides behind the calls on the same connection
  (bus.replication) and the caller says what a shortfall means (`confirm`);
- a Redis failure becomes a bus error (`redis_errors`: transient ones are BusUnavailable,
  with the circuit breaker; a script's own error is raised as Redis said it).

How a round trip is made is the backend's job, chosen here (BACKEND): redis-py's pool and
parser (`PoolBackend`), or connections and a reply reader of the runner's own
(`SocketBackend`, bus.scripts.sockets). `msgbus bench --only scripts` times both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import hiredis
import redis
from redis.exceptions import NoScriptError

from bus.redis_conn import CONNECTION_ERRORS, may_have_run, redis_errors
from bus.replication import Replication
from bus.scripts.backends import Backend, PoolBackend
from bus.scripts.script import Script
from bus.scripts.sockets import SocketBackend

logger = logging.getLogger(__name__)

BACKENDS: dict[str, type[SocketBackend] | type[PoolBackend]] = {
    "socket": SocketBackend,
    "pool": PoolBackend,
}
# The one every runner uses unless told otherwise (bench/RESULTS.md, "Script runner A/B").
BACKEND = BACKENDS["socket"]

Call = tuple[Script, Sequence[str], Sequence[Any]]
# With replicas required, what a write fewer replicas confirmed means: "require" raises
# NotReplicated (transient: the caller retries), "note" logs and counts it (the answer
# stands); None sends no WAIT.
Confirm = Literal["require", "note"] | None


class ScriptRunner:
    def __init__(
        self,
        client: redis.Redis,
        replication: Replication | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.replication = replication or Replication()
        self.backend: Backend = backend if backend is not None else BACKEND(client)
        self._wait = self.replication.packed()

    def call(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        action: str,
        confirm: Confirm = None,
    ) -> Any:
        """Runs `script` once and returns its reply; `action` names it in errors."""
        return self.many([(script, keys, args)], action=action, confirm=confirm)[0]

    def many(
        self,
        calls: Sequence[Call],
        *,
        action: str,
        confirm: Confirm = None,
        partial: bool = False,
    ) -> list[Any]:
        """Runs the calls in one round trip (each atomic on its own) and returns their
        replies in order. A call Redis refused does not stop the others: they ran, and
        the first refusal is raised once all have (`partial`: each refusal is returned in
        its call's place instead). A call whose script Redis had not cached runs again
        after the others, so give it only calls whose order does not matter, or that
        tell when they ran too early (one script does what must happen in order)."""
        if not calls:
            return []
        with redis_errors(action):
            wait = confirm is not None and self.replication.on
            replies, acknowledged = self._run(calls, wait)
            if confirm == "require" and wait:
                self.replication.require(acknowledged, action)
            elif confirm == "note" and wait:
                self.replication.note(acknowledged, action)
            for reply in replies:
                if isinstance(reply, Exception) and not partial:
                    raise reply
            return replies

    def _run(self, calls: Sequence[Call], wait: bool) -> tuple[list[Any], Any]:
        """The calls' replies (errors in place) and WAIT's (None without WAIT)."""
        replies = self._round_trip((), calls, wait)
        acknowledged = replies.pop() if wait else None
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            loads = list({calls[i][0].sha: calls[i][0] for i in missing}.values())
            again = self._round_trip(loads, [calls[i] for i in missing], wait)
            if wait:
                acknowledged = _fewest(acknowledged, again.pop())
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies, acknowledged

    def _round_trip(self, loads: Sequence[Script], calls: Sequence[Call], wait: bool) -> list[Any]:
        """SCRIPT LOAD of `loads`, the calls, then WAIT: one write, one read of the
        replies (the loads' taken off; a load Redis refused is raised)."""
        packed = b"".join(_pack("SCRIPT", "LOAD", script.source) for script in loads)
        packed += b"".join(
            _pack("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls
        )
        if wait:
            packed += self._wait
        count = len(loads) + len(calls) + wait
        try:
            replies = self.backend.send(packed, count)
        except CONNECTION_ERRORS as first:
            try:
                replies = self.backend.send(packed, count)  # on a fresh connection
            except CONNECTION_ERRORS as exc:
                # Failing after the write, Redis may have run the calls all the same.
                setattr(exc, "may_have_run", may_have_run(first) or may_have_run(exc))  # noqa: B010
                raise
        for loaded in replies[: len(loads)]:
            if isinstance(loaded, Exception):
                raise loaded
        return replies[len(loads) :]


def _fewest(first: Any, second: Any) -> Any:
    """Of two WAIT replies, the one that confirms less (an error reply confirms nothing)."""
    if isinstance(first, Exception):
        return first
    if isinstance(second, Exception):
        return second
    return min(int(first), int(second))


def _pack(*command: Any) -> bytes:
    """One command in Redis's wire format; hiredis packs str and numbers in one C call
    (redis-py encodes argument by argument first)."""
    packed: bytes = hiredis.pack_command(command)
    return packed
