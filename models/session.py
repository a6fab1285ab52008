"""Login sessions of mobile apps and their rotating refresh tokens.

A refresh token is stored only as the SHA-256 hex digest of the token: the token is
32 random bytes (256 bits, ``secrets.token_urlsafe``), so nobody can guess or
brute-force it from the digest, and a fast hash is enough (a slow KDF such as Argon2
protects low-entropy secrets like passwords; here it would only slow every refresh).
"""
from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, now_ms


class AuthSession(Base):
    """One login of one device. Times ms UTC; ``revoked_at`` set when it ended
    (logout, ``DELETE /api/auth/sessions/{id}``, or a rotated refresh token presented
    again: ``revoked_reason`` ``logout``, ``deleted``, ``reuse``)."""

    __tablename__ = "auth_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    user_agent: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    last_used_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)


class RefreshToken(Base):
    """One refresh token of a session: ``token_hash`` the SHA-256 hex of the token.
    ``rotated_at`` set when it was exchanged for the next one; presenting it again
    after that revokes the session. ``expires_at`` ms UTC."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("auth_sessions.id", ondelete="CASCADE"),
                                            index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    rotated_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
