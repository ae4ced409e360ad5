"""Bearer tokens for the HTTP MCP server: a JSON file mapping token hashes to agent ids.

Only SHA-256 hashes are stored; `create` returns the token once. Comparison of hashes is
constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
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
        self._mtime: float | None = None
        self._tokens: dict[str, dict[str, str]] = {}

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:  # re-read on change: a revoke takes effect at once
            try:
                data = json.loads(self.path.read_text() or "{}")
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"cannot read tokens file {self.path}: {exc}") from exc
            self._tokens = dict(data.get("tokens", {}))
            self._mtime = mtime
        return self._tokens

    def _save(self, tokens: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"tokens": tokens}, indent=2, sort_keys=True))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)
        self._mtime = None

    def agent_for(self, token: str) -> str | None:
        digest = hash_token(token)
        for stored, entry in self._load().items():
            if hmac.compare_digest(stored, digest):
                return entry["agent"]
        return None

    def create(self, agent: str, now: str = "") -> str:
        check(agent, check_agent_id, "agent id")
        token = "mb_" + secrets.token_urlsafe(32)
        tokens = dict(self._load())
        tokens[hash_token(token)] = {"agent": agent, "created": now}
        self._save(tokens)
        return token

    def revoke(self, agent: str | None = None, token: str | None = None) -> int:
        tokens = dict(self._load())
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
        self._save(tokens)
        return len(doomed)

    def agents(self) -> list[str]:
        return sorted({e["agent"] for e in self._load().values()})
