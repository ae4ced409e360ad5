"""Access-control policy, loaded from an optional YAML or TOML file.

```yaml
default: allow            # allow | deny: what an agent or action not listed gets
admins: [ops]             # may replay/purge dead letters and read any inbox or history
agents:
  alice:
    send: [bob, "worker-*"]      # glob patterns of recipients
    publish: ["tasks/*"]         # topics it may publish to
    subscribe: ["tasks/*"]       # topics it may subscribe to
    broadcast: false
    reply_to: [coordinator]      # as an LLM agent (MCP), whom else it may have answers
                                 # sent to (default: only itself)
    rate_limit: "10/s"           # overrides MESSAGE_BUS_RATE_LIMIT
    burst: 20
```
With no file every agent may talk to every other; admin actions need an admin.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bus.errors import ConfigError
from bus.schema import check_agent_id
from bus.settings import parse_rate


@dataclass(frozen=True)
class AgentRules:
    send: tuple[str, ...] | None = None
    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None
    broadcast: bool | None = None
    reply_to: tuple[str, ...] | None = None
    rate: float | None = None
    burst: int | None = None


@dataclass(frozen=True)
class Policy:
    default_allow: bool = True
    admins: frozenset[str] = frozenset()
    agents: dict[str, AgentRules] = field(default_factory=dict)
    source: str = "default policy"

    @classmethod
    def load(cls, path: Path | None, extra_admins: list[str] | tuple[str, ...] = ()) -> Policy:
        if path is None:
            return cls(admins=frozenset(extra_admins))
        try:
            text = Path(path).read_text()
            data = tomllib.loads(text) if str(path).endswith(".toml") else yaml.safe_load(text)
        except (OSError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read ACL file {path}: {exc}") from exc
        return cls.from_dict(data or {}, source=str(path), extra_admins=extra_admins)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "ACL", extra_admins: Any = ()) -> Policy:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the ACL must be a mapping")
        default = data.get("default", "allow")
        if default not in ("allow", "deny"):
            raise ConfigError(f"{source}: 'default' must be allow or deny, not {default!r}")
        agents = {}
        listed = data.get("agents") or {}
        if not isinstance(listed, dict):
            raise ConfigError(f"{source}: 'agents' must be a mapping of agent ids to rules")
        for name, rules in listed.items():
            name = _agent_id(name, "agents", source)
            rules = rules or {}
            if not isinstance(rules, dict):
                raise ConfigError(f"{source}: rules of agent {name!r} must be a mapping")
            broadcast = rules.get("broadcast")
            if broadcast is not None and not isinstance(broadcast, bool):
                raise ConfigError(
                    f"{source}: agents.{name}.broadcast must be true or false, not {broadcast!r}"
                )
            agents[name] = AgentRules(
                send=_patterns(rules, "send", source),
                publish=_patterns(rules, "publish", source),
                subscribe=_patterns(rules, "subscribe", source),
                broadcast=broadcast,
                reply_to=_patterns(rules, "reply_to", source),
                rate=parse_rate(str(rules["rate_limit"])) if "rate_limit" in rules else None,
                burst=int(rules["burst"]) if "burst" in rules else None,
            )
        listed_admins = data.get("admins") or []
        if not isinstance(listed_admins, list):
            raise ConfigError(f"{source}: 'admins' must be a list of agent ids")
        admins = frozenset(_agent_id(a, "admins", source) for a in listed_admins)
        admins |= frozenset(extra_admins)
        return cls(default == "allow", admins, agents, source)

    def _check(self, agent: str, kind: str, target: str) -> tuple[bool, str]:
        rules = self.agents.get(agent)
        patterns = getattr(rules, kind) if rules else None
        if patterns is None:
            verdict = "allow" if self.default_allow else "deny"
            return self.default_allow, f"{self.source}: default {verdict}"
        for pattern in patterns:
            if fnmatch.fnmatchcase(target, pattern):
                return True, f"{self.source}: agents.{agent}.{kind} matches {pattern!r}"
        return False, f"{self.source}: agents.{agent}.{kind} has no pattern matching {target!r}"

    def may_send(self, agent: str, recipient: str) -> tuple[bool, str]:
        return self._check(agent, "send", recipient)

    def may_publish(self, agent: str, topic: str) -> tuple[bool, str]:
        return self._check(agent, "publish", topic)

    def may_subscribe(self, agent: str, topic: str) -> tuple[bool, str]:
        return self._check(agent, "subscribe", topic)

    def may_reply_to(self, agent: str, target: str) -> tuple[bool, str]:
        """Whether an LLM agent may have answers sent to `target` (another agent): only
        where its rules say so. An answer is sent by the agent that answers (a worker
        agent), to the inbox the request named, and counts against the answering agent's
        share of that inbox: left open, any agent could fill another's inbox in a worker
        agent's name and lock that agent's own requests out."""
        rules = self.agents.get(agent)
        for pattern in (rules.reply_to if rules else None) or ():
            if fnmatch.fnmatchcase(target, pattern):
                return True, f"{self.source}: agents.{agent}.reply_to matches {pattern!r}"
        return False, (
            f"{self.source}: an LLM agent names only itself as reply_to, unless "
            f"agents.{agent}.reply_to allows another"
        )

    def may_broadcast(self, agent: str) -> tuple[bool, str]:
        rules = self.agents.get(agent)
        if rules is None or rules.broadcast is None:
            verdict = "allow" if self.default_allow else "deny"
            return self.default_allow, f"{self.source}: default {verdict}"
        return rules.broadcast, f"{self.source}: agents.{agent}.broadcast is {rules.broadcast}"

    def is_admin(self, agent: str) -> bool:
        return agent in self.admins

    def declares(self, agent: str) -> bool:
        """The policy names this agent (rules or admin): it may get mail before it ever
        connects."""
        return agent in self.agents or agent in self.admins

    def rate_for(self, agent: str, default: float) -> float:
        rules = self.agents.get(agent)
        return rules.rate if rules and rules.rate is not None else default

    def burst_for(self, agent: str, default: int | None) -> int | None:
        rules = self.agents.get(agent)
        return rules.burst if rules and rules.burst is not None else default


def _patterns(rules: dict[str, Any], kind: str, source: str) -> tuple[str, ...] | None:
    value = rules.get(kind)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: '{kind}' must be a list of glob patterns")
    return tuple(value)


def _agent_id(value: Any, where: str, source: str) -> str:
    """An agent id as the file wrote it. YAML reads 007, 0123 or on as numbers and booleans
    (and 0123 as 83): such an id would silently name another agent, so it is refused."""
    if not isinstance(value, str):
        raise ConfigError(
            f"{source}: {where} entry {value!r} was read as a {type(value).__name__}, not an "
            "agent id: quote it (e.g. '007')"
        )
    try:
        return check_agent_id(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {where}: {exc}") from exc
