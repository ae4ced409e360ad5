"""Models as plain JSON values: what the CLI prints and MCP resources return."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel


def plain(value: Any) -> Any:
    """Pydantic models (also inside lists and dicts) as JSON-ready values, contract names
    (`from`), no nulls."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def to_json(value: Any, *, indent: bool = False) -> bytes:
    return orjson.dumps(plain(value), option=orjson.OPT_INDENT_2 if indent else 0)
