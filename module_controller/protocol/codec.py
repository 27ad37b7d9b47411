"""JSON in and out: the shared model base, ``decode`` and ``encode``.

Every wire model derives from :class:`WireModel`: Python attributes are snake_case, JSON keys
are the exact camelCase the Java/Go sides use, unknown keys are ignored (real bases send the
whole SOFAArk bean and newer runtimes add fields). ``decode`` is the only entry point for
incoming bytes and raises only :class:`ProtocolError`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from module_controller.protocol.errors import ProtocolError
from module_controller.protocol.states import EnumStyle


class WireModel(BaseModel):
    """Base of every message model: camelCase on the wire, tolerant of unknown keys."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
    )


def wire_key(name: str, default: Any = None) -> Any:
    """A field whose JSON key is not camelCase of its Python name (``"java max metaspace"``).

    Both aliases are set instead of ``alias`` so type checkers keep the Python name as the
    constructor keyword.
    """
    return Field(default=default, validation_alias=name, serialization_alias=name)


M = TypeVar("M", bound=BaseModel)


def decode(model: type[M], payload: bytes | str | Any) -> M:
    """Parse ``payload`` (raw bytes/str of JSON, or an already-parsed value) into ``model``.

    Raises :class:`ProtocolError` for bad UTF-8, bad JSON or a shape that does not validate.
    """
    what = model.__name__
    raw: bytes | str | None = payload if isinstance(payload, bytes | str) else None
    if raw is not None:
        try:
            value = json.loads(raw)
        # ValueError covers bad UTF-8 and bad JSON, and also integers past Python's
        # 4,300-digit limit; RecursionError is JSON nested thousands deep. Neither may escape.
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(what, f"not JSON ({exc})", raw) from exc
    else:
        value = payload
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ProtocolError(what, _summarise(exc), raw) from exc


def encode(
    message: BaseModel,
    *,
    style: EnumStyle = EnumStyle.NAME,
    keep_nulls: bool = False,
) -> bytes:
    """Serialise ``message`` to compact UTF-8 JSON.

    ``style`` picks the SOFAArk enum spelling (MQTT: by name, HTTP: toString). Nulls are
    omitted by default, as fastjson does; the MQTT ``simpleBiz`` list writes them explicitly
    (``keep_nulls=True``).
    """
    value = to_jsonable(message, style=style, keep_nulls=keep_nulls)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def to_jsonable(
    message: BaseModel,
    *,
    style: EnumStyle = EnumStyle.NAME,
    keep_nulls: bool = False,
) -> Any:
    """The JSON-ready value of ``message`` (dicts, lists, strings, numbers)."""
    return message.model_dump(
        mode="json",
        by_alias=True,
        exclude_none=not keep_nulls,
        context={"enum_style": style},
    )


def _summarise(exc: ValidationError, limit: int = 3) -> str:
    """A one-line account of the first few validation errors, with their JSON paths."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(part) for part in error["loc"]) or "<root>"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
