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
from bus.settings import parse_rate


@dataclass(frozen=True)
class AgentRules:
    send: tuple[str, ...] | None = None
    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None
    broadcast: bool | None = None
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
        for name, rules in (data.get("agents") or {}).items():
            rules = rules or {}
            if not isinstance(rules, dict):
                raise ConfigError(f"{source}: rules of agent {name!r} must be a mapping")
            agents[str(name)] = AgentRules(
                send=_patterns(rules, "send", source),
                publish=_patterns(rules, "publish", source),
                subscribe=_patterns(rules, "subscribe", source),
                broadcast=rules.get("broadcast"),
                rate=parse_rate(str(rules["rate_limit"])) if "rate_limit" in rules else None,
                burst=int(rules["burst"]) if "burst" in rules else None,
            )
        admins = frozenset(str(a) for a in data.get("admins") or []) | frozenset(extra_admins)
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
