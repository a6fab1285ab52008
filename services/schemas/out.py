"""The base of every response model and the wire types they share (CONTRACT.md):
decimals as strings (``services.serialize.dec``: plain positional, no exponent, no
trailing zeros), times as integer milliseconds since the Unix epoch, UTC.

``Out``: every declared key is always sent, unknown keys are refused, rows are read by
attribute or by key. ``services.schemas.responses`` (REST bodies) and
``services.schemas.envelopes`` (account envelopes) build on it.
"""
from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from models import TradeStatus
from services.serialize import dec

SIGNED_DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
_DECIMAL_SCHEMA = {"type": "string", "format": "decimal", "pattern": SIGNED_DECIMAL_PATTERN,
                   "examples": ["64210.5"]}

# A Decimal (ORM column, exchange type) sent as a decimal string.
DecimalOut = Annotated[Decimal, PlainSerializer(dec, return_type=str), WithJsonSchema(_DECIMAL_SCHEMA)]
# A decimal string a service already wrote with ``dec`` (push ``data``): passed through.
DecimalText = Annotated[str, WithJsonSchema(_DECIMAL_SCHEMA)]
Ms = Annotated[int, Field(description="milliseconds since the Unix epoch, UTC")]
Seconds = Annotated[int, Field(description="seconds")]
Side = Literal["BUY", "SELL"]
TradeStatusValue = Literal[tuple(t.value for t in TradeStatus)]  # type: ignore[valid-type]


class Out(BaseModel):
    """Base of the response models: every declared key is always sent (required in
    the spec), unknown keys are refused, rows are read by attribute or by key."""

    model_config = ConfigDict(extra="forbid", from_attributes=True,
                              json_schema_serialization_defaults_required=True)

    @classmethod
    def of(cls, obj: Any, **computed: Any) -> dict:
        """``obj`` (object or dict) as this model's JSON-ready dict; ``computed`` gives
        the fields ``obj`` does not hold (read by attribute then). Raises pydantic's
        ValidationError when ``obj`` does not fit (a bug: the handler answers 500)."""
        if computed:
            obj = {**{name: getattr(obj, name) for name in cls.model_fields
                      if name not in computed}, **computed}
        return cls.model_validate(obj).model_dump(mode="json")

    @classmethod
    def many(cls, objs: Iterable[Any]) -> list[dict]:
        """A JSON-ready list, one ``of`` per element."""
        return [cls.model_validate(o).model_dump(mode="json") for o in objs]
