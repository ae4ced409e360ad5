"""Bearer tokens for the HTTP MCP server: a JSON file mapping token hashes to agent ids.

Only SHA-256 hashes are stored; `create` returns the token once. Comparison of hashes is
constant-time. Writers (`msgbus token create|revoke` in several shells, a script) hold an
exclusive lock on `<file>.lock` from reading the file to replacing it, and write through a
temporary file of their own: two at once used to lose each other's change (a revoke undone
by a create beside it) or interleave in one temporary file and leave it unreadable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bus.errors import ConfigError, NotFound
from bus.schema import check_agent_id
from bus.validation import check


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFile:
    """`{"tokens": {"<sha256>": {"agent": "alice", "created": "..."}}}`"""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._version: tuple[int, int, int] | None = None
        self._tokens: dict[str, dict[str, str]] = {}

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        # A replace gives the file a new inode: re-read on any change, even two writes
        # within one tick of a coarse clock (a revoke takes effect at once).
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        if version != self._version:
            try:
                data = json.loads(self.path.read_text() or "{}")
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"cannot read tokens file {self.path}: {exc}") from exc
            self._tokens = dict(data.get("tokens", {}))
            self._version = version
        return self._tokens

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, dict[str, str]]]:
        """The tokens to change, under the writers' lock; saved on a clean exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            self._version = None  # whatever another writer did before the lock was ours
            tokens = dict(self._load())
            yield tokens
            self._save(tokens)

    def _save(self, tokens: dict[str, dict[str, str]]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps({"tokens": tokens}, indent=2, sort_keys=True))
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._version = None

    def agent_for(self, token: str) -> str | None:
        digest = hash_token(token)
        for stored, entry in self._load().items():
            if hmac.compare_digest(stored, digest):
                return entry["agent"]
        return None

    def create(self, agent: str, now: str = "") -> str:
        check(agent, check_agent_id, "agent id")
        token = "mb_" + secrets.token_urlsafe(32)
        with self._writing() as tokens:
            tokens[hash_token(token)] = {"agent": agent, "created": now}
        return token

    def revoke(self, agent: str | None = None, token: str | None = None) -> int:
        with self._writing() as tokens:
            doomed = [
                h
                for h, e in tokens.items()
                if (token is not None and hmac.compare_digest(h, hash_token(token)))
                or (agent is not None and token is None and e["agent"] == agent)
            ]
            if not doomed:
                raise NotFound("no matching token to revoke")
            for h in doomed:
                del tokens[h]
        return len(doomed)

    def agents(self) -> list[str]:
        return sorted({e["agent"] for e in self._load().values()})
