"""Who is calling: the `--agent` of a stdio server, or the agent a bearer token maps to.

Over HTTP the SDK's bearer middleware refuses missing or unknown tokens with 401 before
any tool runs; tools then map the same (verified) token to its agent id again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import AnyHttpUrl

from bus.tokens import TokenFile


class TokenVerifier:
    def __init__(self, tokens: TokenFile) -> None:
        self.tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        agent = self.tokens.agent_for(token)
        if agent is None:
            return None
        return AccessToken(token=token, client_id=agent, scopes=[], subject=agent)


@dataclass
class Identity:
    agent: str | None = None
    tokens: TokenFile | None = None
    base_url: str = "http://127.0.0.1"

    @classmethod
    def stdio(cls, agent: str) -> Identity:
        return cls(agent=agent)

    @classmethod
    def http(cls, tokens: TokenFile, base_url: str) -> Identity:
        return cls(tokens=tokens, base_url=base_url)

    @property
    def token_verifier(self) -> TokenVerifier | None:
        return TokenVerifier(self.tokens) if self.tokens is not None else None

    @property
    def auth_settings(self) -> AuthSettings | None:
        if self.tokens is None:
            return None
        return AuthSettings(
            issuer_url=AnyHttpUrl(self.base_url),
            resource_server_url=AnyHttpUrl(f"{self.base_url}/mcp"),
        )

    def agent_of(self, ctx: Any) -> str:
        if self.agent is not None:
            return self.agent
        headers: Mapping[str, str] | None = getattr(ctx, "headers", None)
        auth = (headers or {}).get("authorization", "")
        scheme, _, token = auth.partition(" ")
        agent = self.tokens.agent_for(token) if self.tokens and scheme.lower() == "bearer" else None
        if agent is None:
            raise ToolError("not authenticated: send 'Authorization: Bearer <token>'")
        return agent
