"""Lean tool definitions: the input schemas and descriptions a model is shown.

Every agent pays for the tool definitions it loads, on every turn. pydantic's schemas carry
what a model does not need: a `title` per property (the name again), `anyOf [X, null]` with
`default: null` for each optional argument, and `$ref`s into `$defs` for two small enums.
`lean_schema` writes the same contract without them: an optional argument is simply not
`required`; the server still validates every call against the full pydantic model, so
nothing the schema no longer says is accepted that was refused before (an explicit null
for an optional argument was and stays accepted).
"""

from __future__ import annotations

import inspect
from typing import Any

_NULL = {"type": "null"}


def description(doc: str | None) -> str:
    """A docstring as one tidy text (no source indentation reaches the model)."""
    return inspect.cleandoc(doc or "").replace("\n", " ")


def lean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.get("$defs", {})
    out: dict[str, Any] = _lean(schema, defs)
    out.pop("$defs", None)
    out.pop("title", None)
    return out


def _lean(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_lean(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    ref = node.pop("$ref", None)
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        node = {**defs.get(ref.removeprefix("#/$defs/"), {}), **node}
    options = node.get("anyOf")
    if isinstance(options, list) and _NULL in options:
        rest = [_lean(o, defs) for o in options if o != _NULL]
        del node["anyOf"]
        node = {**rest[0], **node} if len(rest) == 1 else {**node, "anyOf": rest}
    if "default" in node and node["default"] is None:
        del node["default"]
    node.pop("title", None)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "$defs"):
            out[key] = {name: _lean(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            out[key] = _lean(value, defs)
        else:
            out[key] = value
    return out
