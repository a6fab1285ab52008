"""Exchange API keys of a user. The secret is stored only Fernet-encrypted."""
from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, now_ms


class ExchangeKey(Base):
    """One API key on one venue. ``status`` is ``active`` or ``invalid``; times ms UTC.

    ``api_secret_encrypted`` holds a Fernet token; the clear secret never touches the
    database, a log line or a response.
    """

    __tablename__ = "exchange_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    exchange: Mapped[str] = mapped_column(String(16))
    testnet: Mapped[bool] = mapped_column(Boolean, default=False)
    label: Mapped[str] = mapped_column(String(64), default="")
    api_key: Mapped[str] = mapped_column(String(128))
    api_secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_ms, onupdate=now_ms)

    @property
    def api_key_masked(self) -> str:
        """At most the last 4 characters of the API key, the rest as ``*``."""
        tail = self.api_key[-4:] if len(self.api_key) > 8 else ""
        return "****" + tail
