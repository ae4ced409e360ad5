"""Turning pydantic validation errors into one clear bus error naming field and rule."""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic

from bus.errors import ValidationError

M = TypeVar("M", bound=pydantic.BaseModel)


def describe(exc: pydantic.ValidationError, where: str = "") -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if p != "function-after[...]") or "message"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}{loc}: {msg}")
    return "; ".join(parts)


def parse(model: type[M], data: Any, where: str = "", what: str | None = None) -> M:
    """`data` as `model`, or a ValidationError saying "invalid <what>: <field>: <rule>"."""
    if isinstance(data, model):
        return data
    if not isinstance(data, dict):
        raise ValidationError(
            f"{where or 'message'}: expected a JSON object, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        name = what or model.__name__.lower()
        raise ValidationError(f"invalid {name}: {describe(exc, where)}") from exc


def check(value: Any, checker: Any, what: str) -> Any:
    """Runs a schema checker (check_agent_id, check_topic) raising a bus error."""
    try:
        return checker(value)
    except ValueError as exc:
        raise ValidationError(f"invalid {what}: {exc}") from exc
