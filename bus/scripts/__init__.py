"""Lua scripts: every multi-key write that must not half-apply is one script call, and
every script call goes through one runner.

Keys are always passed in KEYS (built by bus.keys); scripts never assemble key names.

- fragments.py      Lua shared by several scripts (Redis's clock, status ranks, history, tokens)
- send.py           ADMIT, REVOKE, COMMIT: the send side
- inbox.py          DELIVER, DELIVER_INBOX (a batch's messages to one inbox), READ, ACK_READ, ACK,
                    TRIM_HISTORY_BEFORE, TAKE
- handling.py       START_HANDLING, BURY, REOPEN, FORGET_BURIED, HANDLED_AFTER_BURIAL: a worker
                    agent's handler runs, and its dead messages out of the inbox until replayed
- status.py         ADVANCE_STATUS
- ghosts.py         DROP_GHOST: mail for agents that never connected, once stale
- outbox.py         CLAIM: the sweep's takeover of a message its sender never confirmed
- subscriptions.py  SUBSCRIBE, UNSUBSCRIBE
- guard.py          CHARGE, AUDIT
- script.py         Script: a source and its SHA1
- runner.py         ScriptRunner: EVALSHA, NOSCRIPT, retry, WAIT and errors in one place
- backends.py       how a round trip is made (redis-py's pool); sockets.py: the fast one
"""

from __future__ import annotations

from bus.scripts.ghosts import DROP_GHOST
from bus.scripts.guard import AUDIT, CHARGE
from bus.scripts.handling import (
    BURY,
    FORGET_BURIED,
    HANDLED_AFTER_BURIAL,
    REOPEN,
    START_HANDLING,
)
from bus.scripts.inbox import (
    ACK,
    ACK_READ,
    DELIVER,
    DELIVER_INBOX,
    READ,
    TAKE,
    TRIM_HISTORY_BEFORE,
)
from bus.scripts.outbox import CLAIM
from bus.scripts.runner import ScriptRunner
from bus.scripts.script import Script
from bus.scripts.send import ADMIT, COMMIT, REVOKE
from bus.scripts.status import ADVANCE_STATUS
from bus.scripts.subscriptions import SUBSCRIBE, UNSUBSCRIBE

__all__ = [
    "ACK",
    "ACK_READ",
    "ADMIT",
    "ADVANCE_STATUS",
    "AUDIT",
    "BURY",
    "CHARGE",
    "CLAIM",
    "COMMIT",
    "DELIVER",
    "DELIVER_INBOX",
    "DROP_GHOST",
    "FORGET_BURIED",
    "HANDLED_AFTER_BURIAL",
    "READ",
    "REOPEN",
    "REVOKE",
    "START_HANDLING",
    "TAKE",
    "SUBSCRIBE",
    "TRIM_HISTORY_BEFORE",
    "UNSUBSCRIBE",
    "Script",
    "ScriptRunner",
]
