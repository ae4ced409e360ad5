"""Turning pydantic validation errors into one clear bus error naming field and rule, and
the numbers of the API that no schema reads (a time, a timeout) checked the same way."""

from __future__ import annotations

import math
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


def _is_number(value: Any) -> bool:
    # A bool is an int to Python but never a count or a time here, and a string is text
    # to be refused, not parsed: every entrance takes the same numbers as JSON's.
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite(value: Any, what: str, *, positive: bool = False, bound: float = float("inf")) -> float:
    """`value` as a float when it is a finite number within +-`bound` (above 0 if
    `positive`), else a ValidationError naming `what`: infinity or NaN would make a wait
    endless or a time unconvertible."""
    if not _is_number(value):
        raise ValidationError(f"{what}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0) or abs(number) > bound:
        rule = "a finite number above 0" if positive else "a finite number"
        if math.isfinite(bound):
            rule += f" up to {bound:g}"
        raise ValidationError(f"{what}: must be {rule}, got {value!r}")
    return number


def within(value: Any, what: str, low: float, high: float, *, unit: str = "") -> float:
    """`value` when it is a number from `low` to `high` (a wait, in seconds)."""
    if not _is_number(value) or not low <= value <= high:
        raise ValidationError(f"{what} must be {low:g}..{high:g}{unit}, got {value!r}")
    return float(value)


def whole_number(value: Any, what: str, low: int, high: int, setting: str = "") -> int:
    """`value` when it is a whole number from `low` to `high` (a limit, a page size); the
    error names the setting that sets `high` when there is one."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        bound = f" ({setting})" if setting else ""
        raise ValidationError(f"{what} must be a whole number {low}..{high}{bound}, got {value!r}")
    return value
