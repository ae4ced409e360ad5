"""The options of a send, declared once.

`SendOptions` is what a sender says about one message. The MCP tools' arguments
(`send_message`, the items of `send_batch`, `request`) and the CLI's options (`msgbus send`,
`publish`, `broadcast`) are generated from its fields, each entrance taking the subset that
fits it, so names, defaults, descriptions and limits cannot drift apart.
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bus.errors import ValidationError
from bus.schema import BROADCAST, MAX_TTL_SECONDS, Compression, MessageType, Priority
from bus.validation import parse


class SendOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    to: str | None = Field(default=None, description="recipient agent id, e.g. 'bob'")
    topic: str | None = Field(
        default=None, description="to its subscribers when `to` is empty, else a label"
    )
    broadcast: bool = Field(default=False, description="to every agent but you")
    payload: Any = Field(default=None, description="any JSON value")
    type: MessageType = Field(default=MessageType.event, description="message type")
    priority: Priority = Field(default=Priority.normal, description="low|normal|high|critical")
    ttl_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TTL_SECONDS,
        allow_inf_nan=False,
        description="never delivered after this many seconds",
    )
    correlation_id: str | None = Field(
        default=None, max_length=128, description="when answering: the request's id"
    )
    reply_to: str | None = Field(
        default=None,
        description="where responses should go (an LLM agent: itself, or whom its ACL lists)",
    )
    dedup_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="a retry with the same key is not delivered twice",
    )
    encrypted: bool = Field(default=False, description="encrypt the payload at rest")
    compression: Compression = Field(default=Compression.none, description="none|gzip|brotli")
    max_retries: int | None = Field(
        default=None, ge=0, le=100, description="delivery attempts after the first"
    )

    def message(self, sender: str) -> dict[str, Any]:
        """The message these options describe, from `sender`."""
        if self.broadcast and (self.to or self.topic):
            raise ValidationError("broadcast goes to everyone: leave `to` and `topic` empty")
        if not self.broadcast and not self.to and not self.topic:
            raise ValidationError(
                "say where it goes: `to` (an agent id), `topic`, or broadcast=true"
            )
        metadata: dict[str, Any] = {
            "priority": self.priority.value,
            "encrypted": self.encrypted,
            "compression": self.compression.value,
            "ttl": self.ttl_seconds,
            "dedup_key": self.dedup_key,
            "max_retries": self.max_retries,
        }
        message: dict[str, Any] = {
            "from": sender,
            "to": BROADCAST if self.broadcast else self.to,
            "topic": self.topic,
            "type": MessageType.broadcast.value if self.broadcast else self.type.value,
            "payload": self.payload,
            "correlation_id": self.correlation_id,
            "reply_to": self.reply_to,
            "metadata": {k: v for k, v in metadata.items() if v is not None},
        }
        return {k: v for k, v in message.items() if v is not None or k == "payload"}


# What each entrance takes (every name is a SendOptions field).
MCP_SEND = (
    "to",
    "topic",
    "broadcast",
    "payload",
    "type",
    "priority",
    "ttl_seconds",
    "correlation_id",
    "reply_to",
    "dedup_key",
    "encrypted",
)
MCP_BATCH_ITEM = (
    "to",
    "topic",
    "type",
    "payload",
    "priority",
    "ttl_seconds",
    "correlation_id",
    "dedup_key",
)
MCP_REQUEST = ("to", "payload", "type", "priority")
CLI_SEND = tuple(name for name in SendOptions.model_fields if name not in ("broadcast", "to"))


def field(name: str, *, required: bool = False, default: Any = PydanticUndefined) -> FieldInfo:
    """A copy of SendOptions' field `name`: required, or with another default."""
    info = copy.copy(SendOptions.model_fields[name])
    if required:
        info.default = PydanticUndefined
    elif default is not PydanticUndefined:
        info.default = default
    return info


def annotation(name: str, *, required: bool = False) -> Any:
    """The field's type (without its None when it is required)."""
    hint = SendOptions.model_fields[name].annotation
    if required and type(None) in typing.get_args(hint):
        [hint] = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


def parameters(
    names: Sequence[str],
    *,
    required: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
) -> list[inspect.Parameter]:
    """Keyword parameters for a generated function signature (an MCP tool's)."""
    defaults = defaults or {}
    return [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=field(
                name, required=name in required, default=defaults.get(name, PydanticUndefined)
            ),
            annotation=annotation(name, required=name in required),
        )
        for name in names
    ]


def item_model(name: str, names: Sequence[str], doc: str) -> type[BaseModel]:
    """A model of some of the options (a batch item)."""
    fields: dict[str, Any] = {n: (SendOptions.model_fields[n].annotation, field(n)) for n in names}
    model: type[BaseModel] = create_model(
        name, __doc__=doc, __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def parse_options(data: dict[str, Any]) -> SendOptions:
    """SendOptions from what an entrance was given, refused with a named error."""
    return parse(SendOptions, {k: v for k, v in data.items() if v is not None}, what="message")
