"""A Lua script as the runner sends it: its source and the SHA1 Redis caches it under."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    # What EVALSHA names: Redis's own digest of the source, so it is known before any load.
    sha: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())
