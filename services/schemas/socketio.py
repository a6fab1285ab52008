"""Socket.IO ``subscribe`` / ``unsubscribe`` payloads (CONTRACT.md, with the second
round's ``since`` and ``max_hz``), validated with pydantic: a bad payload gets an ack
``{"ok": false, "error": {"code", "message", "field"}}`` naming the field."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.account_kinds import ACCOUNT_TYPES, EVENT_TYPES, STATE_TYPES, AccountKind
from services.schemas.fields import MAX_ID

AccountType = AccountKind
Hz = float
MAX_HZ_LIMIT = 50.0  # the highest ``max_hz`` a subscription may ask for (pushes a second)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Position(_Strict):
    """A client's last envelope of a type: ``{"epoch", "seq"}``; for ``fills`` and
    ``alerts`` also (or instead) ``{"time": T}``: every one with time >= T (ms UTC)."""

    epoch: str | None = Field(default=None, min_length=1, max_length=100)
    seq: int | None = Field(default=None, ge=0)
    time: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> Position:
        if (self.epoch is None) != (self.seq is None):
            raise ValueError("give both epoch and seq")
        if self.epoch is None and self.time is None:
            raise ValueError("give epoch and seq (or time, for fills)")
        return self


class Subscribe(_Strict):
    """``subscribe``: ``types``, optional ``key_id`` (an id in 1..2^31-1, as on REST), optional
    ``since`` per type and ``max_hz`` (one number for every type, or per type;
    mark-driven pushes a second, at most ``MAX_HZ_LIMIT``)."""

    types: list[AccountType] = Field(min_length=1, max_length=len(ACCOUNT_TYPES))
    key_id: int | None = Field(default=None, gt=0, le=MAX_ID)
    since: dict[AccountType, Position] | None = None
    max_hz: Hz | dict[AccountType, Hz] | None = None

    @field_validator("max_hz")
    @classmethod
    def _rates(cls, v):  # type: ignore[no-untyped-def]
        rates = v if isinstance(v, dict) else ({} if v is None else {"all": v})
        for name, hz in rates.items():
            if isinstance(hz, bool) or not 0 < hz <= MAX_HZ_LIMIT:
                raise ValueError(f"max_hz{'' if name == 'all' else ' of ' + name} must be "
                                 f"a number above 0 and at most {MAX_HZ_LIMIT:g}")
        return v

    @field_validator("since")
    @classmethod
    def _since(cls, v):  # type: ignore[no-untyped-def]
        for kind, pos in (v or {}).items():
            if pos.time is not None and kind not in EVENT_TYPES:
                raise ValueError(f"{kind}: time is accepted for fills and alerts only")
        return v

    def rates(self) -> dict[str, float]:
        """``max_hz`` per type asked for (types not named keep the defaults)."""
        if self.max_hz is None:
            return {}
        if isinstance(self.max_hz, dict):
            return {k: float(v) for k, v in self.max_hz.items()}
        return {k: float(self.max_hz) for k in STATE_TYPES}


class Unsubscribe(_Strict):
    """``unsubscribe``: the types to leave (``key_id`` accepted and ignored, as before)."""

    types: list[AccountType] = Field(min_length=1, max_length=len(ACCOUNT_TYPES))
    key_id: int | None = Field(default=None, gt=0, le=MAX_ID)
